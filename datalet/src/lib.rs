//! Datalets: single-node stores behind one trait.
//!
//! # Layout
//!
//! - [`Datalet`]: the interface every store implements. Items carry a [`Version`]; every change
//!   is a [`Mutation`] applied at a version the caller chose, so replicas that apply the same
//!   mutations in the same order hold the same items, CAS uniques included.
//! - [`memory`]: the embedded in-memory store on `dashmap`, the default.
//! - [`disk`]: the durable store on `redb`, with group commit.
//! - [`remote`]: items kept in any memcached-protocol server (`memcached://host:port`), with a
//!   header in front of each value that carries its version and expiry.
//! - [`conformance`]: the behaviour every backend must have, as test cases; a backend's tests
//!   run them all with [`conformance_tests!`].
//!
//! Time is passed in (`now`), never read here, so expiry is tested without sleeping.

pub mod conformance;
pub mod disk;
pub mod guarded;
pub mod memory;
pub mod mutate;
pub mod remote;

use std::future::Future;

use bytes::Bytes;
use tailorkv_common::codec::StoreMode;
use tailorkv_common::{Expiry, Ts, UnixSecs, Version};

pub use disk::{DiskDatalet, DiskOptions};
pub use guarded::Guarded;
pub use memory::MemoryDatalet;
pub use remote::{RemoteDatalet, RemoteOptions};

/// A stored value with its metadata.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Item {
    pub value: Bytes,
    pub flags: u32,
    pub expiry: Expiry,
    pub version: Version,
    /// What the meta protocol marks on an item besides its data.
    pub marks: Marks,
}

/// The meta protocol's marks on an item, kept and replicated with it (memcached's
/// `ITEM_STALE`, `ITEM_TOKEN_SENT` and `ITEM_KEY_BINARY` bits).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Marks(pub u8);

impl Marks {
    /// Marked stale by `md <key> I` or a stale `ms ... I`: readers are told to recache it.
    pub const STALE: Marks = Marks(1);
    /// A client has been handed the win token for it (`W`); later readers get `Z`.
    pub const WON: Marks = Marks(2);
    /// Stored by `ms` with a base64 key (`b`): its key is returned in base64.
    pub const BINARY_KEY: Marks = Marks(4);
    /// Every bit defined.
    pub const ALL: Marks = Marks(7);

    pub fn contains(self, other: Marks) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn with(self, other: Marks) -> Marks {
        Marks(self.0 | other.0)
    }

    pub fn without(self, other: Marks) -> Marks {
        Marks(self.0 & !other.0)
    }
}

/// A change to one key. Each variant is one memcached command's effect.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Mutation {
    /// `set`, `add`, `replace`, `append`, `prepend` or `cas`. Append and prepend keep the
    /// existing item's flags and expiry and ignore these.
    Store {
        mode: StoreMode,
        flags: u32,
        expiry: Expiry,
        value: Bytes,
    },
    Delete,
    /// Adds to a decimal value, wrapping at 2^64.
    Incr(u64),
    /// Subtracts from a decimal value, stopping at 0.
    Decr(u64),
    /// Sets the expiry and keeps the value and its version.
    Touch {
        expiry: Expiry,
    },
    /// Removes the item if it is still the one at `version` (memcached's eviction, made an
    /// operation so that replicas evict in one order): a key written since keeps its item.
    /// Counted as an eviction, not a delete.
    Evict {
        version: Version,
    },
    /// `ms`: a store with meta-protocol options; also how replication stores an item whole,
    /// marks included.
    MetaSet(MetaSet),
    /// `mg` with a flag that can change the item (`N`, `R`, `T`), or a read of a stale item
    /// that may hand out its win token.
    MetaGet(MetaGet),
    /// `md`: a delete, conditional on a CAS unique, or marking the item stale.
    MetaDelete(MetaDelete),
    /// `ma`: `incr`/`decr` conditional on a CAS unique, creating the item on a miss.
    MetaArith(MetaArith),
}

/// The options of a [`Mutation::MetaSet`], as memcached's `do_store_item` reads them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MetaSet {
    /// `Set`, `Add`, `Replace`, `Append` or `Prepend` (never `Cas`: see `compare`).
    pub mode: StoreMode,
    /// `C<cas>`: with `Set` or `Replace` the store is a `cas`; `Append` and `Prepend` check it
    /// too; `Add` ignores it.
    pub compare: Option<u64>,
    /// `I`: a `cas` whose unique is older than the item's still stores, marked stale, keeping
    /// the old item's expiry and win token.
    pub invalidate: bool,
    pub flags: u32,
    pub expiry: Expiry,
    pub value: Bytes,
    /// The marks the new item starts with (only [`Marks::BINARY_KEY`] from a client).
    pub marks: Marks,
}

/// The options of a [`Mutation::MetaGet`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MetaGet {
    /// `N<ttl>`: a miss creates an empty item with this expiry, and its reader wins.
    pub vivify: Option<Expiry>,
    /// `R<ttl>`: a reader wins if the item expires before this point (and no one won yet).
    pub recache: Option<Expiry>,
    /// `T<ttl>`: the item's new expiry.
    pub touch: Option<Expiry>,
    /// `T` came before `R` on the line, so `R` compares the new expiry.
    pub touch_first: bool,
    /// The read counts as an access (not `u`): the item is marked fetched and its last
    /// access moves, where the store keeps those.
    pub bump: bool,
}

/// The options of a [`Mutation::MetaDelete`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MetaDelete {
    /// `C<cas>`: only if the item's CAS unique is this one.
    pub compare: Option<u64>,
    /// `I`: mark the item stale and give it a new CAS unique instead of removing it.
    pub invalidate: bool,
    /// `T<ttl>` with `I`: its new expiry.
    pub touch: Option<Expiry>,
}

/// The options of a [`Mutation::MetaArith`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MetaArith {
    /// `incr` (else `decr`).
    pub incr: bool,
    pub delta: u64,
    /// `C<cas>`: only if the item's CAS unique is this one (0: no check).
    pub compare: Option<u64>,
    /// `N<ttl>` (and `J<initial>`): a miss creates the item holding `initial`, with this
    /// expiry.
    pub vivify: Option<(Expiry, u64)>,
    /// `T<ttl>`: the item's new expiry once the number changed.
    pub touch: Option<Expiry>,
}

impl Mutation {
    /// About how much more of the memory limit `key` may take after this mutation, by what
    /// the memory store charges: a store, its new item's chunk; `incr`/`decr`, 20 digits;
    /// the others nothing. What a replicated mode checks before it carries a write out.
    pub fn growth(&self, key: &[u8]) -> usize {
        match self {
            Mutation::Store { value, flags, .. } => {
                let size = tailorkv_common::codec::item_size(key.len(), *flags, value.len());
                tailorkv_common::slabs::classes().charge(size)
            }
            Mutation::MetaSet(m) => {
                let size = tailorkv_common::codec::item_size(key.len(), m.flags, m.value.len());
                tailorkv_common::slabs::classes().charge(size)
            }
            Mutation::Incr(_) | Mutation::Decr(_) | Mutation::MetaArith(_) => 20,
            Mutation::MetaGet(MetaGet {
                vivify: Some(_), ..
            }) => {
                let size = tailorkv_common::codec::item_size(key.len(), 0, 0);
                tailorkv_common::slabs::classes().charge(size)
            }
            Mutation::Delete
            | Mutation::Touch { .. }
            | Mutation::Evict { .. }
            | Mutation::MetaGet(_)
            | Mutation::MetaDelete(_) => 0,
        }
    }
}

/// What a mutation did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    Stored,
    /// `add` on a present key, `replace`/`append`/`prepend` on an absent one, or an append
    /// that would make the item too large.
    NotStored,
    /// `cas` whose unique no longer matches.
    Exists,
    NotFound,
    Deleted,
    /// The touched item, as it is now.
    Touched(Item),
    /// The new value of an `incr`/`decr`.
    Number(u64),
    /// `incr`/`decr` of a value that is not a decimal number.
    NonNumeric,
    /// A [`Mutation::MetaSet`] stored its item, at this version.
    StoredAt(Version),
    /// A [`Mutation::MetaGet`] found or created the item.
    Fetched(Box<Fetched>),
    /// A [`Mutation::MetaDelete`] marked the item stale.
    Invalidated,
    /// A [`Mutation::MetaArith`] changed or created the number.
    Counted(Box<Counted>),
}

/// What a [`Mutation::MetaGet`] found: the item as it left it, and what the reply reports.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fetched {
    pub item: Item,
    /// The item's marks before the read (a win token handed out earlier shows as `Z`).
    pub marks_before: Marks,
    /// Its expiry before the read (`Never` for an item it created).
    pub expiry_before: Expiry,
    /// The read created the item (`N` on a miss).
    pub created: bool,
    /// The reader won the right to recache it (`W`).
    pub won: bool,
}

/// What a [`Mutation::MetaArith`] left.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counted {
    pub number: u64,
    pub item: Item,
    /// Its expiry before (`Never` for an item it created).
    pub expiry_before: Expiry,
    pub created: bool,
}

/// One operation of [`Datalet::apply_batch`]: what [`Datalet::apply`] takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchOp {
    pub key: Bytes,
    pub mutation: Mutation,
    pub version: Version,
    pub now: UnixSecs,
}

/// Why a datalet could not carry out a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum DataletError {
    /// Storing would exceed the memory limit, and nothing (more) could be evicted to make
    /// room.
    #[error("out of memory storing object")]
    OutOfMemory,
    /// The store cannot be reached or failed (a remote server down, a disk error). Whether the
    /// request took effect is unknown.
    #[error("datalet unavailable: {0}")]
    Unavailable(String),
}

/// Limits a datalet enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Total bytes of items (keys, values and per-item overhead) the store may hold.
    pub memory_limit_bytes: usize,
    /// The largest item, counted as memcached counts it (see
    /// [`tailorkv_common::codec::item_fits`]).
    pub item_size_max: usize,
    /// A write that does not fit evicts the least recently used items to make room
    /// (memcached's default), instead of being refused (memcached's `-M`). Only the memory
    /// store evicts by itself; every store that can name what it would evict answers
    /// [`Datalet::victims`] either way.
    pub evict: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_limit_bytes: 64 << 20,
            item_size_max: tailorkv_common::codec::DEFAULT_ITEM_SIZE_MAX,
            evict: false,
        }
    }
}

/// Counters a datalet reports for `stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataletStats {
    pub curr_items: u64,
    pub total_items: u64,
    pub bytes: u64,
    pub limit_maxbytes: u64,
    /// Reads that found an item past its expiry.
    pub get_expired: u64,
    /// Reads that found an item invalidated by `flush_all`.
    pub get_flushed: u64,
    /// Expired items removed to reclaim their memory.
    pub reclaimed: u64,
    /// Live items evicted to make room.
    pub evictions: u64,
    /// Evicted items that were never read.
    pub evicted_unfetched: u64,
    /// Expired items reclaimed that were never read.
    pub expired_unfetched: u64,
}

/// How an item has been used, as the memory store keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// The second it was last read or written.
    pub last: UnixSecs,
    /// Whether it has been read since it was stored.
    pub fetched: bool,
}

/// One slab class's items, for `stats items` and `stats slabs` (see
/// [`tailorkv_common::slabs`]): memcached's per-class counters that mean something here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClassStats {
    /// The class id, from 1.
    pub class: usize,
    /// Items stored in the class.
    pub number: u64,
    /// Their sizes, as memcached counts them (`mem_requested`).
    pub requested: u64,
    /// Seconds since the least recently used item of the class was stored or moved up.
    pub age: u64,
    pub evicted: u64,
    /// Evicted items that had an expiry.
    pub evicted_nonzero: u64,
    /// Seconds between the last evicted item's last access and its eviction.
    pub evicted_time: u64,
    pub evicted_unfetched: u64,
    /// Evicted items that had been read since they last moved up.
    pub evicted_active: u64,
    pub expired_unfetched: u64,
    /// Expired items reclaimed.
    pub reclaimed: u64,
    /// Writes to the class refused for memory.
    pub outofmemory: u64,
    /// Chunks its items take (an item larger than the largest chunk takes several).
    pub chunks: u64,
    /// Requests that found or changed an item of the class, as `stats slabs` counts them.
    pub get_hits: u64,
    pub cmd_set: u64,
    pub delete_hits: u64,
    pub incr_hits: u64,
    pub decr_hits: u64,
    pub cas_hits: u64,
    pub cas_badval: u64,
    pub touch_hits: u64,
}

/// A snapshot being read ([`Datalet::snapshot`]).
pub trait Snapshot: Send {
    /// The next items, about `max_bytes` of keys and values (at least one item, however
    /// large), or an empty part once every item was read. It may block on I/O: call it from a
    /// blocking thread.
    fn next_part(&mut self, max_bytes: usize) -> Result<Vec<(Bytes, Item)>, DataletError>;
}

/// What an item counts for in a snapshot's part.
pub fn part_bytes(key: &[u8], item: &Item) -> usize {
    key.len() + item.value.len()
}

/// A snapshot already read whole, handed out in parts.
pub struct Scanned {
    items: std::vec::IntoIter<(Bytes, Item)>,
    held: Option<(Bytes, Item)>,
}

impl Scanned {
    pub fn new(items: Vec<(Bytes, Item)>) -> Self {
        Scanned {
            items: items.into_iter(),
            held: None,
        }
    }
}

impl Snapshot for Scanned {
    fn next_part(&mut self, max_bytes: usize) -> Result<Vec<(Bytes, Item)>, DataletError> {
        fill_part(self.items.by_ref().map(Ok), &mut self.held, max_bytes)
    }
}

/// Takes items from `items` into a part of at most `max_bytes` (or one larger item), keeping
/// in `held` the item that did not fit, for the next part.
pub(crate) fn fill_part(
    mut items: impl Iterator<Item = Result<(Bytes, Item), DataletError>>,
    held: &mut Option<(Bytes, Item)>,
    max_bytes: usize,
) -> Result<Vec<(Bytes, Item)>, DataletError> {
    let mut part = Vec::new();
    let mut bytes = 0;
    loop {
        let next = match held.take() {
            Some(item) => item,
            None => match items.next() {
                Some(item) => item?,
                None => return Ok(part),
            },
        };
        let size = part_bytes(&next.0, &next.1);
        if !part.is_empty() && bytes + size > max_bytes {
            *held = Some(next);
            return Ok(part);
        }
        bytes += size;
        part.push(next);
    }
}

/// A single-node store.
///
/// Every method takes `now`, the caller's clock, so that expiry is decided identically by
/// every replica and is testable without sleeping. Per key, mutations take effect in the
/// order they are applied.
pub trait Datalet: Send + Sync + 'static {
    /// The live item under `key`, if any.
    fn get(
        &self,
        key: &[u8],
        now: UnixSecs,
    ) -> impl Future<Output = Result<Option<Item>, DataletError>> + Send;

    /// [`Datalet::get`] that does not count as an access (`mg ... u`): the item is not marked
    /// fetched and its last access stays, where the store keeps those. Hits still count.
    fn peek(
        &self,
        key: &[u8],
        now: UnixSecs,
    ) -> impl Future<Output = Result<Option<Item>, DataletError>> + Send {
        self.get(key, now)
    }

    /// Every live item (not expired at `now`, not hidden by a flush), with its key, in no
    /// particular order. Used for anti-entropy.
    fn scan(
        &self,
        now: UnixSecs,
    ) -> impl Future<Output = Result<Vec<(Bytes, Item)>, DataletError>> + Send;

    /// The live items at `now` as they are at this moment, read a part at a time: what a
    /// replica sends a joining one. Changes applied after this returns are not in it. The
    /// default takes a [`Datalet::scan`] and hands it out in parts (the memory store's scan
    /// shares its values, so it costs a reference per item); the disk store reads its parts
    /// from one read transaction as they are asked for, so a snapshot of a store larger than
    /// memory never sits in memory whole.
    fn snapshot(
        &self,
        now: UnixSecs,
    ) -> impl Future<Output = Result<Box<dyn Snapshot>, DataletError>> + Send {
        async move {
            let items = self.scan(now).await?;
            Ok(Box::new(Scanned::new(items)) as Box<dyn Snapshot>)
        }
    }

    /// Applies one mutation to `key`. A change it makes carries `version`, except `Touch`,
    /// which keeps the item's version as memcached keeps its CAS unique.
    fn apply(
        &self,
        key: &Bytes,
        mutation: Mutation,
        version: Version,
        now: UnixSecs,
    ) -> impl Future<Output = Result<Outcome, DataletError>> + Send;

    /// Applies `ops` in their order, each as [`Datalet::apply`] would, and returns each one's
    /// outcome in that order. A store that can carry many out together does: the disk store
    /// in as few transactions (and fsyncs) as its writer's batch allows, instead of one each.
    /// Each key's operations keep their order. The default applies them one after another.
    fn apply_batch(
        &self,
        ops: Vec<BatchOp>,
    ) -> impl Future<Output = Vec<Result<Outcome, DataletError>>> + Send {
        async move {
            let mut outcomes = Vec::with_capacity(ops.len());
            for op in ops {
                outcomes.push(self.apply(&op.key, op.mutation, op.version, op.now).await);
            }
            outcomes
        }
    }

    /// Invalidates every item stored at or before second `at`, once the clock reaches `at`:
    /// an `at` earlier than `now` empties the store at once, and an `at` equal to `now` also
    /// hides what is stored during the rest of this second (memcached's `oldest_live`). A
    /// flush replaces any earlier pending one. The memory and disk stores first remove what
    /// an earlier point that is already due hid, so a later point cannot bring it back (the
    /// `memcached://` store does not). `version` is the flush's place in the order
    /// of changes, which a durable store records with it, as it does an applied mutation's
    /// (see [`Datalet::load_clock`]).
    fn flush_all(
        &self,
        at: UnixSecs,
        now: UnixSecs,
        version: Version,
    ) -> impl Future<Output = Result<(), DataletError>> + Send;

    /// Removes every item and any pending flush point, as a fresh store. The clock
    /// reservation ([`Datalet::load_clock`]) is kept, but a durable store reports 0 from
    /// `load_clock` until the next [`Datalet::save_clock`]: a state being installed is not a
    /// position to restart from. Used before a replica installs a transferred state.
    fn reset(&self) -> impl Future<Output = Result<(), DataletError>> + Send;

    /// The clock reservation last saved with [`Datalet::save_clock`], or 0 if none: every
    /// version in the store has a timestamp at or below it. A durable store keeps it across
    /// restarts, so a restarted node never issues a version (a CAS unique) twice. A durable
    /// store also counts the version of every mutation and flush it applied, in the same
    /// transaction as the change, so what it returns is never behind what it holds: in the
    /// strong modes, where versions are positions in the order, it is where the store's state
    /// stands. After a [`Datalet::reset`] not yet followed by a `save_clock` it is 0.
    fn load_clock(&self) -> impl Future<Output = Result<Ts, DataletError>> + Send;

    /// Records that timestamps up to `ts` may be in use. Returns once it is as durable as the
    /// store's items.
    fn save_clock(&self, ts: Ts) -> impl Future<Output = Result<(), DataletError>> + Send;

    /// Changes the memory limit. Items already stored stay.
    fn set_memory_limit(&self, bytes: usize);

    /// Whether the store is known to have lost items it had stored, since it was opened or
    /// last reset: a remote server that restarted empty or evicted. A replica that sees this
    /// no longer holds the order's state. The default: never.
    fn lost_items(&self) -> bool {
        false
    }

    /// Frees what items dead at `now` hold (expired or flushed), where the store keeps them
    /// until they are touched. Returns how many it removed. A replica calls it with the
    /// order's clock, before which no operation still to come can be applied, so what it
    /// removes is dead for every replica. The default removes nothing.
    fn reclaim(&self, now: UnixSecs) -> impl Future<Output = u64> + Send {
        let _ = now;
        async { 0 }
    }

    /// The store's counters. A remote store's may trail its state by a moment.
    fn stats(&self) -> DataletStats;

    /// Live items to evict to free about `bytes` (at least that much while there are items),
    /// least recently used first, each with the version it holds now: the caller evicts them
    /// with [`Mutation::Evict`], which spares an item written meanwhile. Items named once are
    /// not named again unless they move up. The default: none (a store that cannot tell,
    /// such as a remote server, which evicts by itself).
    fn victims(&self, bytes: usize, now: UnixSecs) -> Vec<(Bytes, Version)> {
        let _ = (bytes, now);
        Vec::new()
    }

    /// The counters of each slab class that holds items or has evicted some, by class id.
    /// The default: none.
    fn item_classes(&self, now: UnixSecs) -> Vec<ClassStats> {
        let _ = now;
        Vec::new()
    }

    /// What the store knows of the item under `key` beyond the item itself, for
    /// `lru_crawler metadump`: `None` if it keeps nothing more (or holds no such item).
    fn access(&self, key: &[u8]) -> Option<Access> {
        let _ = key;
        None
    }

    /// Zeroes the counters `stats reset` zeroes in memcached: everything but what the store
    /// holds. The default: nothing to zero.
    fn reset_stats(&self) {}

    /// The bytes the store holds as last known, as they count against its memory limit (the
    /// memory store charges each item its slab class's chunk), asking nothing of anyone: what
    /// a check on every write may call. A remote store's figure trails its server by up to a refresh.
    fn used_bytes(&self) -> u64 {
        self.stats().bytes
    }
}
