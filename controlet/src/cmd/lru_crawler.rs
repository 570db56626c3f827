//! `lru_crawler metadump all|hash|<class ids>`: every live item, one line each, then `END`.
//!
//! The format is memcached 1.6.18's, byte for byte: each item is
//!
//! ```text
//! key=<URL-encoded key> exp=<-1 or unix time> la=<unix time> cas=<unique> fetch=<yes|no> cls=<class> size=<bytes>
//! ```
//!
//! ended by `\n` alone, and the dump ends with `END\r\n`. Expired and flushed items are left
//! out, as memcached leaves them out. `key=` is URL-encoded as memcached encodes it (letters,
//! digits and `-._~` as they are, every other byte `%XX`), `cas=` is the CAS unique `gets`
//! reports, and `exp=` is `-1` for an item that does not expire, else the unix time it
//! expires at. `cls=` is the item's slab class as memcached sizes them
//! ([`tailorkv_common::slabs`]), and a dump of a list of class ids lists the items of those
//! classes. `size=` is the item's size as memcached counts it ([`item_size`]: header, CAS,
//! flags, key, data and its `\r\n`). `la=` (last access) and `fetch=` (read since stored) are
//! the store's own record where it keeps one (the memory store); a store that keeps none
//! (disk, `memcached://`) reports the time of the dump and `no`.
//!
//! The dump lists the local datalet ([`Engine::scan`](crate::engine::Engine::scan)); in a
//! cluster that is this node's replica as it stands, not read through the total order. It
//! is one reply like any other: it comes in order with the replies to requests pipelined
//! around it (memcached refuses a dump queued behind other replies with `ERROR cannot pipeline
//! other commands before metadump`, depending on how its reads were batched), and it is never
//! `BUSY`, since dumps do not share a crawler. A store that fails to list answers its error
//! (`SERVER_ERROR ...`) instead of any item line. The other `lru_crawler` subcommands are
//! answered by the parser (`tailorkv_common::codec`).

use tailorkv_common::codec::{item_size, MetadumpLine, Response};
use tailorkv_common::Expiry;
use tailorkv_datalet::Datalet;
use tokio::io::AsyncWrite;

use super::Context;
use crate::out::Out;

/// `lru_crawler metadump`: the items of the classes whose bits are set in `classes`, then
/// `END`.
pub async fn metadump<D: Datalet, W: AsyncWrite + Unpin>(
    ctx: &Context<D>,
    classes: u64,
    out: &mut Out<W>,
) -> std::io::Result<()> {
    let items = match ctx.engine.scan().await {
        Ok(items) => items,
        Err(e) => {
            tracing::warn!(error = %e, "datalet failed to list its items");
            super::admin::error_reply(e).encode(&mut out.buf);
            return Ok(());
        }
    };
    let now = ctx.engine.now();
    let slabs = tailorkv_common::slabs::classes();
    for (key, item, access) in &items {
        let size = item_size(key.len(), item.flags, item.value.len());
        let class = slabs.class_of(size);
        if classes & (1 << class) == 0 {
            continue;
        }
        let line = MetadumpLine {
            key,
            exp: match item.expiry {
                Expiry::Never => None,
                Expiry::At(at) => Some(at),
            },
            last_access: access.map_or(now, |a| a.last),
            cas: ctx.cas(item.version),
            fetched: access.is_some_and(|a| a.fetched),
            class: class as u32,
            size,
        };
        line.encode(&mut out.buf);
        out.flush_if_full().await?;
    }
    Response::End.encode(&mut out.buf);
    Ok(())
}
