//! memcached's slab classes: the chunk sizes items are stored in, computed as memcached 1.6
//! computes them (`slabs_init`), so that `stats items` and `stats slabs` name the same classes
//! and a store charges an item what memcached would.
//!
//! Classes grow by a factor of 1.25 from 96 bytes (a 48-byte header and memcached's default
//! 48-byte minimum), each rounded up to 8 bytes, until the next would pass the largest chunk
//! (half a 1 MiB page); the last class is that largest chunk. An item larger than it is
//! stored by memcached in several largest chunks, and is charged here as that many.

/// memcached's page: chunks of a class are cut from pages of this size.
pub const PAGE_BYTES: usize = 1 << 20;
/// The largest chunk (memcached's `slab_chunk_max`): half a page.
pub const CHUNK_MAX_BYTES: usize = PAGE_BYTES / 2;
/// memcached's growth factor (`-f`).
pub const GROWTH_FACTOR: f64 = 1.25;
/// The smallest chunk: memcached's 48-byte item header and its default `-n 48`.
const SMALLEST_CHUNK: usize = 48 + 48;
/// memcached's `MAX_NUMBER_OF_SLAB_CLASSES` (class ids run from 1 to 63).
const MAX_CLASSES: usize = 64;

/// The slab classes: chunk sizes, smallest first; class `id` (from 1, as memcached numbers
/// them) is `sizes[id - 1]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlabClasses {
    sizes: Vec<usize>,
}

/// memcached's default classes, built once.
pub fn classes() -> &'static SlabClasses {
    static CLASSES: std::sync::LazyLock<SlabClasses> = std::sync::LazyLock::new(SlabClasses::new);
    &CLASSES
}

impl Default for SlabClasses {
    fn default() -> Self {
        Self::new()
    }
}

impl SlabClasses {
    /// memcached's default classes (`-n 48 -f 1.25`, 1 MiB pages).
    pub fn new() -> Self {
        let mut sizes = Vec::new();
        let mut size = SMALLEST_CHUNK as f64;
        while sizes.len() + 1 < MAX_CLASSES - 1 {
            let mut chunk = size as usize;
            if chunk as f64 >= CHUNK_MAX_BYTES as f64 / GROWTH_FACTOR {
                break;
            }
            if !chunk.is_multiple_of(8) {
                chunk += 8 - chunk % 8;
            }
            sizes.push(chunk);
            size = chunk as f64 * GROWTH_FACTOR;
        }
        sizes.push(CHUNK_MAX_BYTES);
        SlabClasses { sizes }
    }

    /// How many classes there are (the largest class's id).
    pub fn len(&self) -> usize {
        self.sizes.len()
    }

    /// Never: there is always the largest class.
    pub fn is_empty(&self) -> bool {
        self.sizes.is_empty()
    }

    /// The chunk size of class `id` (from 1).
    pub fn chunk_size(&self, id: usize) -> usize {
        self.sizes[id - 1]
    }

    /// The class an item of `size` bytes (its `ITEM_ntotal`, see
    /// [`crate::codec::item_size`]) is stored in: the smallest whose chunk holds it, or the
    /// largest for an item stored in several chunks.
    pub fn class_of(&self, size: usize) -> usize {
        self.sizes
            .partition_point(|&chunk| chunk < size)
            .min(self.sizes.len() - 1)
            + 1
    }

    /// What an item of `size` bytes takes of the memory limit: its class's chunk, or as many
    /// largest chunks as it needs.
    pub fn charge(&self, size: usize) -> usize {
        if size > CHUNK_MAX_BYTES {
            return size.div_ceil(CHUNK_MAX_BYTES) * CHUNK_MAX_BYTES;
        }
        self.chunk_size(self.class_of(size))
    }

    /// How many chunks of class `id` a page holds (memcached's `perslab`).
    pub fn per_page(&self, id: usize) -> usize {
        PAGE_BYTES / self.chunk_size(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunk sizes a memcached 1.6.18 started with `-vv` prints ("slab class N: chunk
    /// size S perslab P").
    #[test]
    fn the_classes_are_memcacheds() {
        let classes = SlabClasses::new();
        assert_eq!(classes.len(), 39);
        let memcached = [
            96, 120, 152, 192, 240, 304, 384, 480, 600, 752, 944, 1184, 1480, 1856, 2320, 2904,
            3632, 4544, 5680, 7104, 8880, 11104, 13880, 17352, 21696, 27120, 33904, 42384, 52984,
            66232, 82792, 103496, 129376, 161720, 202152, 252696, 315872, 394840, 524288,
        ];
        assert_eq!(classes.sizes, memcached);
        assert_eq!(classes.per_page(1), 10_922);
        assert_eq!(classes.per_page(39), 2);
    }

    #[test]
    fn an_item_goes_to_the_smallest_class_that_holds_it() {
        let classes = SlabClasses::new();
        assert_eq!(classes.class_of(1), 1);
        assert_eq!(classes.class_of(96), 1);
        assert_eq!(classes.class_of(97), 2);
        // `set key0 0 0 66560` in memcached's evictions test: class 31.
        let size = crate::codec::item_size(4, 0, 66_560);
        assert_eq!(classes.class_of(size), 31);
        assert_eq!(classes.charge(size), 82_792);
        assert_eq!(classes.class_of(CHUNK_MAX_BYTES + 1), 39);
        assert_eq!(classes.charge(CHUNK_MAX_BYTES + 1), 2 * CHUNK_MAX_BYTES);
    }
}
