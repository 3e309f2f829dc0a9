// Package catalog decides which plugin binaries the host may run.
//
// Plugins live in one directory. A catalog file in that directory pins each
// binary by name and SHA-256. A binary that is not in the catalog, whose
// digest differs, or that is reached through a symlink leading out of the
// directory is refused with a clear error. The package reads and writes the
// catalog and verifies files; it must not execute anything (describing and
// launching plugins belongs to the plugin host).
package catalog

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/dwcp/dwcp/sdk/plugin"
)

// FileName is the catalog's name inside the plugin directory.
const FileName = "catalog.json"

// Sentinel errors callers branch on.
var (
	ErrTampered  = errors.New("plugin binary does not match its pinned SHA-256")
	ErrUnknown   = errors.New("plugin binary is not in the catalog")
	ErrEscapes   = errors.New("plugin path leads outside the plugin directory")
	ErrMissing   = errors.New("cataloged plugin binary is missing")
	ErrBadFormat = errors.New("malformed catalog")
)

// Entry pins one plugin binary.
type Entry struct {
	// Name is the plugin's name; File its path relative to the directory.
	Name   string `json:"name"`
	File   string `json:"file"`
	SHA256 string `json:"sha256"`
}

// Sum returns the pinned digest as bytes.
func (e Entry) Sum() ([]byte, error) {
	b, err := hex.DecodeString(e.SHA256)
	if err != nil || len(b) != sha256.Size {
		return nil, fmt.Errorf("catalog entry %q: sha256 %q is not 64 hex digits: %w", e.Name, e.SHA256, ErrBadFormat)
	}
	return b, nil
}

// Catalog is the parsed catalog of a plugin directory.
type Catalog struct {
	Dir     string  `json:"-"`
	Version int     `json:"version"`
	Plugins []Entry `json:"plugins"`
}

// Verified is an entry whose file passed every check.
type Verified struct {
	Entry
	Path string // absolute, symlinks resolved
	Sum  []byte
}

// Refusal explains why a file or entry may not run.
type Refusal struct {
	Name string
	Path string
	Err  error
}

func (r Refusal) Error() string { return fmt.Sprintf("plugin %s (%s): %v", r.Name, r.Path, r.Err) }

// Unwrap lets errors.Is see the sentinel (ErrTampered, ...) behind it.
func (r Refusal) Unwrap() error { return r.Err }

// Load reads dir/catalog.json.
func Load(dir string) (*Catalog, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("plugin directory %s: %w", dir, err)
	}
	data, err := os.ReadFile(filepath.Join(abs, FileName))
	if err != nil {
		return nil, fmt.Errorf("read plugin catalog: %w", err)
	}
	var c Catalog
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("plugin catalog %s: %v: %w", filepath.Join(abs, FileName), err, ErrBadFormat)
	}
	if c.Version != 1 {
		return nil, fmt.Errorf("plugin catalog %s: version %d, want 1: %w", filepath.Join(abs, FileName), c.Version, ErrBadFormat)
	}
	seen := map[string]bool{}
	for _, e := range c.Plugins {
		if e.Name == "" || e.File == "" {
			return nil, fmt.Errorf("plugin catalog: entry with empty name or file: %w", ErrBadFormat)
		}
		if seen[e.Name] {
			return nil, fmt.Errorf("plugin catalog: %q listed twice: %w", e.Name, ErrBadFormat)
		}
		seen[e.Name] = true
		if _, err := e.Sum(); err != nil {
			return nil, err
		}
	}
	c.Dir = abs
	return &c, nil
}

// Save writes the catalog atomically (write, fsync, rename).
func (c *Catalog) Save() error {
	c.Version = 1
	sort.Slice(c.Plugins, func(i, j int) bool { return c.Plugins[i].Name < c.Plugins[j].Name })
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(c.Dir, ".catalog-*")
	if err != nil {
		return fmt.Errorf("write plugin catalog: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write plugin catalog: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write plugin catalog: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write plugin catalog: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(c.Dir, FileName)); err != nil {
		return fmt.Errorf("write plugin catalog: %w", err)
	}
	return nil
}

// resolve returns the real path of rel inside dir, refusing anything that
// leaves dir once symlinks are resolved.
func resolve(dir, rel string) (string, error) {
	if filepath.IsAbs(rel) {
		return "", fmt.Errorf("%q is absolute: %w", rel, ErrEscapes)
	}
	realDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", err
	}
	p, err := filepath.EvalSymlinks(filepath.Join(realDir, rel))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("%s: %w", rel, ErrMissing)
		}
		return "", err
	}
	inside, err := filepath.Rel(realDir, p)
	if err != nil || inside == ".." || strings.HasPrefix(inside, ".."+string(filepath.Separator)) {
		return "", fmt.Errorf("%s resolves to %s: %w", rel, p, ErrEscapes)
	}
	return p, nil
}

// Verify checks every entry and every other file in the directory. It
// returns what may run and, separately, what was refused and why; one bad
// plugin does not stop the others.
func (c *Catalog) Verify() ([]Verified, []Refusal) {
	var ok []Verified
	var refused []Refusal
	listed := map[string]bool{}
	for _, e := range c.Plugins {
		v, r := c.verifyEntry(e)
		if v.Path != "" {
			listed[v.Path] = true
		}
		if r != nil {
			refused = append(refused, *r)
			continue
		}
		ok = append(ok, v)
	}
	for _, name := range executables(c.Dir) {
		path, err := resolve(c.Dir, name)
		if err != nil {
			refused = append(refused, Refusal{Name: name, Path: filepath.Join(c.Dir, name), Err: err})
			continue
		}
		if !listed[path] {
			refused = append(refused, Refusal{Name: name, Path: path, Err: ErrUnknown})
		}
	}
	return ok, refused
}

// VerifyEntry checks the one entry called name, as Verify checks each
// (resolved inside the directory, digest equal to the pin), without
// reading the other plugins. The error is a Refusal, or says that the
// catalog has no such entry.
func (c *Catalog) VerifyEntry(name string) (Verified, error) {
	for _, e := range c.Plugins {
		if e.Name == name {
			v, r := c.verifyEntry(e)
			if r != nil {
				return Verified{}, *r
			}
			return v, nil
		}
	}
	return Verified{}, fmt.Errorf("plugin %s: %w", name, ErrUnknown)
}

// verifyEntry checks e. The Verified it returns carries the resolved path
// whenever the file resolved, also when it was refused afterwards.
func (c *Catalog) verifyEntry(e Entry) (Verified, *Refusal) {
	path, err := resolve(c.Dir, e.File)
	if err != nil {
		return Verified{}, &Refusal{Name: e.Name, Path: filepath.Join(c.Dir, e.File), Err: err}
	}
	want, _ := e.Sum()
	got, err := plugin.FileSHA256(path)
	if err != nil {
		return Verified{Path: path}, &Refusal{Name: e.Name, Path: path, Err: err}
	}
	if !bytes.Equal(got, want) {
		return Verified{Path: path}, &Refusal{Name: e.Name, Path: path,
			Err: fmt.Errorf("%w: have %x, pinned %s (rebuild and run `dwcp plugins pin` if you changed it on purpose)", ErrTampered, got, e.SHA256)}
	}
	return Verified{Entry: e, Path: path, Sum: got}, nil
}

// executables lists the names of executable files (or links) in dir.
func executables(dir string) []string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, de := range entries {
		if de.IsDir() || de.Name() == FileName || strings.HasPrefix(de.Name(), ".") {
			continue
		}
		info, err := os.Stat(filepath.Join(dir, de.Name()))
		if err != nil {
			if de.Type()&os.ModeSymlink != 0 {
				out = append(out, de.Name()) // dangling link: report it
			}
			continue
		}
		if info.Mode().IsRegular() && info.Mode()&0o111 != 0 {
			out = append(out, de.Name())
		}
	}
	return out
}

// Pin writes a catalog that pins every executable regular file in dir
// (not symlinks) under its file name, replacing any previous catalog.
func Pin(dir string) (*Catalog, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	c := &Catalog{Dir: abs, Version: 1}
	for _, name := range executables(abs) {
		p := filepath.Join(abs, name)
		if fi, err := os.Lstat(p); err != nil || fi.Mode()&os.ModeSymlink != 0 {
			continue
		}
		sum, err := plugin.FileSHA256(p)
		if err != nil {
			return nil, err
		}
		c.Plugins = append(c.Plugins, Entry{Name: strings.TrimPrefix(name, "dwcp-plugin-"), File: name, SHA256: hex.EncodeToString(sum)})
	}
	if err := c.Save(); err != nil {
		return nil, err
	}
	return c, nil
}
