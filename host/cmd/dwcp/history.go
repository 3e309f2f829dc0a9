package main

import (
	"errors"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/dwcp/dwcp/host/agent"
	"github.com/dwcp/dwcp/host/modes"
	"github.com/dwcp/dwcp/host/pagestage"
	"github.com/dwcp/dwcp/host/pagestore"
	"github.com/dwcp/dwcp/host/pipeline"
)

// The page history (docs/pagestore.md) lives in STATE_DIR/pages. Every
// command that moves QEMU streams opens it; it only ever saves bytes, so a
// history that cannot be opened (another dwcp process holds it, a
// read-only disk) is reported and the command goes on without it.

// historyDirName is the history's directory under the state directory.
const historyDirName = "pages"

// sizeValue is a byte count flag written like "4GiB", "512M" or "0".
type sizeValue int64

func (s *sizeValue) String() string { return formatSize(int64(*s)) }
func (s *sizeValue) Type() string   { return "size" }
func (s *sizeValue) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	*s = sizeValue(n)
	return nil
}

// parseSize reads a byte count: a non-negative integer with an optional
// binary suffix K, M, G or T (also written KiB, MiB, ..., any case).
func parseSize(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "b"), "i")
	shift := 0
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'k':
			shift = 10
		case 'm':
			shift = 20
		case 'g':
			shift = 30
		case 't':
			shift = 40
		}
		if shift > 0 {
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseUint(t, 10, 63)
	if err != nil || v > math.MaxInt64>>shift {
		return 0, fmt.Errorf("size %q: want a byte count like 4GiB, 512M or 0", s)
	}
	return int64(v) << shift, nil
}

func formatSize(n int64) string {
	for _, u := range []struct {
		shift int
		name  string
	}{{40, "TiB"}, {30, "GiB"}, {20, "MiB"}, {10, "KiB"}} {
		if n != 0 && n&(1<<u.shift-1) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.name
		}
	}
	return strconv.FormatInt(n, 10)
}

// openHistory opens the host's page history, or returns nil (with a note
// on log) when it is off or cannot be opened.
func openHistory(stateDir string, limit int64, log io.Writer) *pagestore.Store {
	if stateDir == "" || limit <= 0 {
		return nil
	}
	st, err := pagestore.Open(filepath.Join(stateDir, historyDirName), pagestore.Options{Limit: limit})
	switch {
	case errors.Is(err, pagestore.ErrLocked):
		fmt.Fprintf(log, "dwcp: page history: another dwcp process on this host (its dwcp serve) holds %s; going on without it\n",
			filepath.Join(stateDir, historyDirName))
		return nil
	case err != nil:
		fmt.Fprintf(log, "dwcp: page history: %v; going on without it\n", err)
		return nil
	}
	if n := st.Stats().RemovedAtOpen; n > 0 {
		fmt.Fprintf(log, "dwcp: page history: deleted %d unfinished or damaged sessions\n", n)
	}
	return st
}

// historyFor decides whether a session uses the page history and returns
// the page stage to use with it. History is on in internet and hybrid
// modes and off in datacenter mode: there the page stage runs only the
// zero test, throughput first, and recording would add a hash and a copy
// of every page and a disk write at link rate (3 GB/s on 25 GbE) on both
// hosts to save bytes a fat link does not need saved.
func historyFor(plan *agent.SessionPlan, ps pipeline.BatchBuilderFactory, st *pagestore.Store, peer string, off bool) *pipeline.History {
	if st == nil || off || ps == nil || plan.Mode == modes.Datacenter {
		return nil
	}
	if p, ok := ps.(*pipeline.PageStage); ok {
		// The mode plans leave Known off where nothing could answer it.
		p.Options.Disabled &^= pagestage.Known
	}
	return &pipeline.History{Store: st, Peer: peer}
}

// historyLine says in one line what a session did with the history.
func historyLine(h pipeline.HistorySummary, known uint64) string {
	if h.Session == "" {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "history: session %s", h.Session)
	if h.Recording {
		b.WriteString(" recorded")
	} else {
		b.WriteString(" not recorded")
	}
	if h.Sessions > 0 {
		fmt.Fprintf(&b, "; %d earlier sessions (%d pages) in common", h.Sessions, h.KnownPages)
	}
	if known > 0 {
		fmt.Fprintf(&b, "; %d pages sent as references", known)
	}
	for _, p := range h.Problems {
		fmt.Fprintf(&b, "; %s", p)
	}
	return b.String()
}
