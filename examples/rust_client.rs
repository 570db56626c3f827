//! A tailorkv (or any memcached) client in Rust, with the `memcache-async` crate.
//!
//! ```text
//! cargo run -p tailorkv-controlet &                 # serves on 127.0.0.1:11211
//! cargo run -p tailorkv-examples --example rust_client [HOST:PORT]
//! ```

use anyhow::Context;
use memcache_async::ascii::Protocol;
use tokio::net::TcpStream;
use tokio_util::compat::TokioAsyncReadCompatExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:11211".to_string());
    let stream = TcpStream::connect(&addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    // memcache-async works over futures' AsyncRead/AsyncWrite: `compat()` adapts tokio's.
    let mut cache = Protocol::new(stream.compat());

    println!("server version: {}", cache.version().await?);

    // `set` sends `noreply`, so it returns as soon as the request is written.
    cache.set("greeting", b"hello from Rust", 0).await?;
    let value = cache.get("greeting").await?;
    println!("get greeting -> {:?}", String::from_utf8_lossy(&value));

    // A miss is an error of kind NotFound.
    match cache.get("no-such-key").await {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => println!("get no-such-key -> miss"),
        other => println!("get no-such-key -> {other:?}"),
    }

    cache.set("visits", b"0", 0).await?;
    let visits = cache.increment("visits", 1).await?;
    println!("incr visits -> {visits}");

    // Compare and swap: store only if nobody changed the item since we read it.
    let (old, unique) = cache.gets_cas("greeting").await?;
    let swapped = cache.cas("greeting", b"hello again", unique, 0).await?;
    println!(
        "cas greeting {:?} -> \"hello again\": {}",
        String::from_utf8_lossy(&old),
        if swapped {
            "stored"
        } else {
            "someone else changed it"
        }
    );

    cache.delete("greeting").await?;
    println!("deleted greeting");
    Ok(())
}
