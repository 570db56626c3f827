//! `controlet`: a memcached-compatible server. `controlet --help` explains every flag.

use clap::Parser;
use tailorkv_controlet::process::{init_logging, serve_until_signal};
use tailorkv_controlet::Config;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_logging();
    serve_until_signal(config, "controlet")
}
