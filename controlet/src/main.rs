//! `controlet`: a memcached-compatible server. `controlet --help` explains every flag.

use tailorkv_controlet::process::{init_logging, serve_until_signal};
use tailorkv_controlet::Config;

fn main() -> anyhow::Result<()> {
    let config = match Config::from_args(std::env::args_os().collect()) {
        Ok(config) => config,
        // Help, version and usage errors print as clap prints them.
        Err(e) => match e.downcast::<clap::Error>() {
            Ok(e) => e.exit(),
            // Settings that parse but do not make sense together: one line, as clap's errors.
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::exit(2);
            }
        },
    };
    init_logging(config.log_format, config.log_level());
    for option in &config.ignored_extended {
        // `-R N` arrives whole; `-o` options without their flag.
        let flag = if option.starts_with('-') {
            option.clone()
        } else {
            format!("-o {option}")
        };
        tracing::warn!(
            "{flag}: tunes memcached's own internals, which tailorkv does not have; ignored"
        );
    }
    serve_until_signal(config, "controlet")
}
