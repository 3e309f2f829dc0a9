package modes

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
	"unicode/utf8"
)

// CacheFile is the name of the path cache in a state directory.
const CacheFile = "paths.json"

// Cache limits: a damaged or hostile file cannot make a reader hold more.
const (
	maxCacheFile    = 1 << 20
	maxCachePeers   = 4096
	maxPeerName     = 253
	cacheVersion    = 1
	DefaultCacheAge = time.Hour
)

// Cache keeps the last measured path to each peer in a JSON file, so that
// the next session to the same peer can skip the bandwidth burst (Probe
// still checks the RTT). Entries older than the age limit are ignored.
// Writes replace the file atomically; two processes writing at once may
// lose one update, never corrupt the file. Safe for concurrent use.
type Cache struct {
	file   string
	maxAge time.Duration
	now    func() time.Time
	mu     sync.Mutex
}

// cacheDoc is the file's layout.
type cacheDoc struct {
	Version int             `json:"version"`
	Peers   map[string]Path `json:"peers"`
}

// OpenCache uses dir (created if missing, mode 0700) with an age limit
// (DefaultCacheAge when zero).
func OpenCache(dir string, maxAge time.Duration) (*Cache, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open path cache in %s: %w", dir, err)
	}
	if maxAge <= 0 {
		maxAge = DefaultCacheAge
	}
	return &Cache{file: filepath.Join(dir, CacheFile), maxAge: maxAge, now: time.Now}, nil
}

// CheckPeerName accepts the names a cache or override file may key on: 1
// to 253 bytes of UTF-8 without control characters.
func CheckPeerName(name string) error {
	if len(name) == 0 || len(name) > maxPeerName || !utf8.ValidString(name) {
		return fmt.Errorf("peer name %q: want 1..%d bytes of UTF-8: %w", name, maxPeerName, ErrBadConfig)
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("peer name %q: control character: %w", name, ErrBadConfig)
		}
	}
	return nil
}

// parseCache decodes and checks a cache file.
func parseCache(data []byte) (map[string]Path, error) {
	if len(data) > maxCacheFile {
		return nil, fmt.Errorf("path cache of %d bytes (limit %d): %w", len(data), maxCacheFile, ErrBadConfig)
	}
	var doc cacheDoc
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("path cache: %v: %w", err, ErrBadConfig)
	}
	if doc.Version != cacheVersion {
		return nil, fmt.Errorf("path cache version %d, want %d: %w", doc.Version, cacheVersion, ErrBadConfig)
	}
	if len(doc.Peers) > maxCachePeers {
		return nil, fmt.Errorf("path cache with %d peers (limit %d): %w", len(doc.Peers), maxCachePeers, ErrBadConfig)
	}
	for name, p := range doc.Peers {
		if err := CheckPeerName(name); err != nil {
			return nil, fmt.Errorf("path cache: %w", err)
		}
		if err := p.Validate(); err != nil {
			return nil, fmt.Errorf("path cache entry %q: %w", name, err)
		}
	}
	if doc.Peers == nil {
		doc.Peers = map[string]Path{}
	}
	return doc.Peers, nil
}

func (c *Cache) load() (map[string]Path, error) {
	f, err := os.Open(c.file)
	if errors.Is(err, os.ErrNotExist) {
		return map[string]Path{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read path cache: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxCacheFile+1))
	if err != nil {
		return nil, fmt.Errorf("read path cache %s: %w", c.file, err)
	}
	peers, err := parseCache(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.file, err)
	}
	return peers, nil
}

// Get returns the cached path to peer when there is one younger than the
// age limit. A damaged file is an error (the caller probes instead).
func (c *Cache) Get(peer string) (Path, bool, error) {
	if err := CheckPeerName(peer); err != nil {
		return Path{}, false, fmt.Errorf("path cache get: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	peers, err := c.load()
	if err != nil {
		return Path{}, false, err
	}
	p, ok := peers[peer]
	if !ok {
		return Path{}, false, nil
	}
	if age := c.now().Sub(p.When); age > c.maxAge || age < -time.Minute {
		return Path{}, false, nil
	}
	return p, true, nil
}

// Put stores the path to peer. A damaged file is replaced; when the file
// is full the oldest entry makes room.
func (c *Cache) Put(peer string, p Path) error {
	if err := CheckPeerName(peer); err != nil {
		return fmt.Errorf("path cache put: %w", err)
	}
	if err := p.Validate(); err != nil {
		return fmt.Errorf("path cache put %q: %w", peer, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	peers, err := c.load()
	if err != nil {
		peers = map[string]Path{}
	}
	if p.When.IsZero() {
		p.When = c.now()
	}
	peers[peer] = p
	for len(peers) > maxCachePeers {
		names := make([]string, 0, len(peers))
		for n := range peers {
			names = append(names, n)
		}
		oldest := slices.MinFunc(names, func(a, b string) int { return peers[a].When.Compare(peers[b].When) })
		delete(peers, oldest)
	}
	data, err := json.MarshalIndent(cacheDoc{Version: cacheVersion, Peers: peers}, "", "  ")
	if err != nil {
		return fmt.Errorf("path cache put %q: %w", peer, err)
	}
	return writeAtomic(c.file, data)
}

// writeAtomic replaces path with data through a temporary file in the same
// directory, so that a reader sees the old file or the new one.
func writeAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	_, werr := f.Write(append(data, '\n'))
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Chmod(tmp, 0o600)
	}
	if werr == nil {
		werr = os.Rename(tmp, path)
	}
	if werr != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, werr)
	}
	return nil
}
