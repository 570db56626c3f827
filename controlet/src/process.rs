//! What the `controlet` and `datalet` binaries share: logging, the runtime, and serving until
//! SIGINT or SIGTERM.

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::{run_configured, Config};

/// Logs to stderr through `tracing`, as text or one JSON object per line, at `level`
/// (`info`, `debug`...) unless `RUST_LOG` sets another.
pub fn init_logging(format: crate::config::LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        crate::config::LogFormat::Text => logs.init(),
        crate::config::LogFormat::Json => logs.json().init(),
    }
}

/// Open files past `--max-connections` that a node needs: listeners, peer links, the
/// datalets' files, the HTTP endpoint, connections being refused.
const SPARE_FILES: u64 = 1024;

/// Raises the soft limit on open files, if it is below `--max-connections` plus
/// [`SPARE_FILES`], as far as the hard limit allows (memcached does the same with `-c`); a
/// node that cannot get enough says so.
fn raise_open_files(max_connections: usize) {
    let want = max_connections as u64 + SPARE_FILES;
    // SAFETY: getrlimit and setrlimit only read and write the struct they are given.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 || limit.rlim_cur >= want {
        return;
    }
    limit.rlim_cur = want.min(limit.rlim_max);
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 || limit.rlim_cur < want {
        tracing::warn!(
            open_files = limit.rlim_cur,
            wanted = want,
            "the open-file limit is below --max-connections plus spare files; connections \
             past it wait in the listen queue"
        );
    }
}

/// Serves `config` on a runtime of `config.threads` workers until SIGINT or SIGTERM.
pub fn serve_until_signal(config: Config, what: &'static str) -> anyhow::Result<()> {
    raise_open_files(config.max_connections);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(serve(config, what))
}

/// A listener on `addr` whose queue of connections not yet accepted holds `backlog` (the
/// kernel caps it at `net.core.somaxconn`); past that, the kernel drops new connections' SYNs
/// and clients retry a second later.
fn bind(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

async fn serve(config: Config, what: &'static str) -> anyhow::Result<()> {
    let listener = bind(config.listen, config.listen_backlog)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        datalet = %config.datalet,
        memory_limit_mib = config.memory_limit,
        "{what} serving memcached clients"
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    run_configured(listener, config, shutdown).await?;
    tracing::info!("{what} stopped");
    Ok(())
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
    shutdown.cancel();
}
