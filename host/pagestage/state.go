package pagestage

import "github.com/zeebo/xxh3"

// The mirrored state. Every method that changes it is called by the encoder
// when it writes a record and by the decoder when it applies the same record,
// in the same order, so the two copies never differ. Lookups change nothing.

// chunkPages is the allocation unit of a pageStore: page memory is taken
// lazily, so a session that asks for a large cache but sends little (or a
// hostile first batch) costs only what it fills.
const chunkPages = 64

// pageStore holds n pages of content.
type pageStore struct {
	n      int
	chunks [][]byte
}

func (s *pageStore) init(n int) {
	s.n = n
	s.chunks = make([][]byte, (n+chunkPages-1)/chunkPages)
}

// page returns slot i's memory, allocating its chunk on first use.
func (s *pageStore) page(i int) []byte {
	c := s.chunks[i/chunkPages]
	if c == nil {
		c = make([]byte, chunkPages*PageSize)
		s.chunks[i/chunkPages] = c
	}
	off := (i % chunkPages) * PageSize
	return c[off : off+PageSize : off+PageSize]
}

// dedupRing is the decoder's half of the dedup state: the last n page
// contents inserted, oldest overwritten first (FIFO, so eviction depends only
// on the count of inserts). A reference names an entry by its distance back
// from the newest insert, which lets the decoder tell an evicted or never
// inserted entry from a live one.
type dedupRing struct {
	store pageStore
	count uint64 // inserts so far
}

func (r *dedupRing) init(n int) { r.store.init(n); r.count = 0 }

func (r *dedupRing) enabled() bool { return r.store.n > 0 }

// held is the number of live entries.
func (r *dedupRing) held() uint64 { return min(r.count, uint64(r.store.n)) }

func (r *dedupRing) get(dist uint64) ([]byte, bool) {
	if dist == 0 || dist > r.held() {
		return nil, false
	}
	return r.store.page(int((r.count - dist) % uint64(r.store.n))), true
}

func (r *dedupRing) insert(content []byte) {
	copy(r.store.page(int(r.count%uint64(r.store.n))), content)
	r.count++
}

// dedupIndex is the encoder's half: the content hash of every ring entry and
// an open-addressing table from hash to ring slot. It holds no page content,
// so the encoder's cost is ~32 bytes an entry.
type dedupIndex struct {
	n      int
	count  uint64
	hashes []xxh3.Uint128 // by ring slot
	table  []uint32       // ring slot+1, 0 = empty; linear probing
	mask   uint64
}

func (x *dedupIndex) init(n int) {
	x.n = n
	x.count = 0
	if n == 0 {
		x.hashes, x.table = nil, nil
		return
	}
	size := 1
	for size < 2*n {
		size <<= 1
	}
	x.hashes = make([]xxh3.Uint128, n)
	x.table = make([]uint32, size)
	x.mask = uint64(size - 1)
}

func (x *dedupIndex) enabled() bool { return x.n > 0 }

// find returns the distance back of the ring entry holding content h.
func (x *dedupIndex) find(h xxh3.Uint128) (uint64, bool) {
	for i := h.Lo & x.mask; ; i = (i + 1) & x.mask {
		e := x.table[i]
		if e == 0 {
			return 0, false
		}
		if x.hashes[e-1] == h {
			newest := (x.count - 1) % uint64(x.n)
			d := (newest + uint64(x.n) - uint64(e-1)) % uint64(x.n)
			return d + 1, true
		}
	}
}

// insert appends h to the ring, evicting the oldest entry when full. It
// reports whether it evicted one.
func (x *dedupIndex) insert(h xxh3.Uint128) bool {
	slot := x.count % uint64(x.n)
	evicted := x.count >= uint64(x.n)
	if evicted {
		x.remove(slot)
	}
	x.hashes[slot] = h
	i := h.Lo & x.mask
	for x.table[i] != 0 {
		i = (i + 1) & x.mask
	}
	x.table[i] = uint32(slot) + 1
	x.count++
	return evicted
}

// remove deletes ring slot's table entry with backward-shift deletion, which
// keeps every probe chain unbroken without tombstones.
func (x *dedupIndex) remove(slot uint64) {
	i := x.hashes[slot].Lo & x.mask
	for x.table[i] != uint32(slot)+1 {
		i = (i + 1) & x.mask
	}
	for j := (i + 1) & x.mask; x.table[j] != 0; j = (j + 1) & x.mask {
		home := x.hashes[x.table[j]-1].Lo & x.mask
		// The entry at j may move back to the hole at i only if its home
		// is not cyclically inside (i, j].
		if (j-home)&x.mask >= (j-i)&x.mask {
			x.table[i] = x.table[j]
			i = j
		}
	}
	x.table[i] = 0
}

// deltaCache maps a page address (block index, page number) to the content
// last sent for it. It is set-associative; a new entry replaces the least
// recently stored one of its set. Only put changes it, and both ends call
// put for exactly the records that carry an address.
//
// Every page sent enters the cache. Keeping first sends out (QEMU's xbzrle
// leaves the whole first pass out) or letting them evict only entries never
// re-sent measured no better on real streams: in a precopy migration first
// sends all come in the first pass, before any re-send.
type deltaCache struct {
	sets, ways int
	keys       []cacheKey
	store      pageStore
	clock      uint64
}

type cacheKey struct {
	pfn   uint64
	stamp uint64 // 0 = empty; otherwise the clock at the last store
	block uint32
}

func (c *deltaCache) init(sets, ways int) {
	c.sets, c.ways = sets, ways
	c.keys = make([]cacheKey, sets*ways)
	c.store.init(sets * ways)
	c.clock = 0
}

func (c *deltaCache) enabled() bool { return c.sets > 0 }

// set spreads pages of one block over consecutive sets, so a guest no larger
// than the cache fits without conflicts; blocks start at unrelated offsets.
func (c *deltaCache) set(block uint32, pfn uint64) int {
	return int((pfn + uint64(block)*0x9e3779b97f4a7c15) % uint64(c.sets))
}

func (c *deltaCache) lookup(block uint32, pfn uint64) ([]byte, bool) {
	base := c.set(block, pfn) * c.ways
	for w := base; w < base+c.ways; w++ {
		k := &c.keys[w]
		if k.stamp != 0 && k.pfn == pfn && k.block == block {
			return c.store.page(w), true
		}
	}
	return nil, false
}

// put makes (block, pfn) the newest entry of its set and returns the memory
// its content must be copied into, and whether another page was evicted.
func (c *deltaCache) put(block uint32, pfn uint64) ([]byte, bool) {
	base := c.set(block, pfn) * c.ways
	victim := base
	for w := base; w < base+c.ways; w++ {
		k := &c.keys[w]
		if k.stamp != 0 && k.pfn == pfn && k.block == block {
			victim = w
			break
		}
		if k.stamp < c.keys[victim].stamp {
			victim = w
		}
	}
	k := &c.keys[victim]
	evicted := k.stamp != 0 && (k.pfn != pfn || k.block != block)
	c.clock++
	*k = cacheKey{pfn: pfn, stamp: c.clock, block: block}
	return c.store.page(victim), evicted
}
