package pipeline

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/internal/testguest"
	"github.com/dwcp/dwcp/host/pagestage"
	"github.com/dwcp/dwcp/host/pagestore"
	"github.com/dwcp/dwcp/host/qemustream/streamtest"
)

const guestPages = 2048 // an 8 MiB test guest

// guestMemory is a test guest's RAM: every page distinct, half of them
// text-like (compressible about 3x, like most real guest pages), a
// quarter random, a quarter zero.
func guestMemory(seed uint64) [][]byte {
	rng := rand.New(rand.NewPCG(seed, 1))
	mem := make([][]byte, guestPages)
	for i := range mem {
		mem[i] = make([]byte, pagestage.PageSize)
		switch i % 4 {
		case 0, 1:
			textPage(mem[i], rng)
		case 2:
			for off := 0; off < len(mem[i]); off += 8 {
				binary.LittleEndian.PutUint64(mem[i][off:], rng.Uint64())
			}
		}
	}
	return mem
}

func textPage(p []byte, rng *rand.Rand) {
	words := []string{"kernel ", "page ", "cache ", "inode ", "dentry ", "socket ", "buffer ", "0x"}
	for off := 0; off < len(p); {
		off += copy(p[off:], words[rng.IntN(len(words))])
	}
	binary.LittleEndian.PutUint64(p, rng.Uint64())
}

// modify rewrites every tenth page of mem (in a copy) with new text.
func modify(mem [][]byte, seed uint64) [][]byte {
	rng := rand.New(rand.NewPCG(seed, 2))
	out := make([][]byte, len(mem))
	copy(out, mem)
	for i := 0; i < len(out); i += 10 {
		out[i] = make([]byte, pagestage.PageSize)
		textPage(out[i], rng)
	}
	return out
}

// guestStream is a one-pass precopy migration stream of mem in QEMU's
// format, with a device section after RAM.
func guestStream(mem [][]byte) []byte {
	b := streamtest.New(streamtest.Options{})
	b.Header()
	b.OpenReturnPath()
	ram := b.SectionStart("ram", 0, 4)
	b.MemSize([]streamtest.Block{{Name: "pc.ram", Length: uint64(len(mem) * pagestage.PageSize)}})
	b.EOS()
	b.Footer(ram)
	zero := make([]byte, pagestage.PageSize)
	for i, p := range mem {
		if i%64 == 0 {
			if i > 0 {
				b.EOS()
				b.Footer(ram)
			}
			b.SectionPart(ram)
		}
		if bytes.Equal(p, zero) {
			b.Zero("pc.ram", uint64(i*pagestage.PageSize), 0)
		} else {
			b.Page("pc.ram", uint64(i*pagestage.PageSize), p)
		}
	}
	b.EOS()
	b.Footer(ram)
	b.SectionEnd(ram)
	b.EOS()
	b.Footer(ram)
	b.Device("cpu", 0, 1, bytes.Repeat([]byte{1, 2, 3, 0}, 200))
	b.EOF()
	return b.Bytes()
}

func nonZero(mem [][]byte) int {
	n := 0
	zero := make([]byte, pagestage.PageSize)
	for _, p := range mem {
		if !bytes.Equal(p, zero) {
			n++
		}
	}
	return n
}

func openStore(t testing.TB, dir string) *pagestore.Store {
	t.Helper()
	s, err := pagestore.Open(dir, pagestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// waitHeld waits until store holds n sessions with peer (commits run in the
// background once a session is verified).
func waitHeld(t testing.TB, s *pagestore.Store, peer string, n int) []pagestore.Info {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		h := s.Held(peer)
		if len(h) == n {
			return h
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s holds %d sessions with %s, want %d", s.Dir(), len(h), peer, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// hop carries stream from the host with store src (peer name srcName) to
// the host with store dst; either store may be nil (no history there).
func hop(t *testing.T, stream []byte, src, dst *pagestore.Store, srcName, dstName string) *result {
	t.Helper()
	return hopWith(t, stream, src, dst, srcName, dstName, FixedPolicy{Codec: 1, Level: 3})
}

func hopWith(t *testing.T, stream []byte, src, dst *pagestore.Store, srcName, dstName string, policy Policy) *result {
	t.Helper()
	srcCodecs, dstCodecs := codecsFor()
	cfg := SourceConfig{Codecs: srcCodecs, Policy: policy, PageStage: DefaultPageStage(), BatchBytes: 256 << 10,
		ExpectedLength: guestPages * pagestage.PageSize}
	dcfg := DestConfig{Codecs: dstCodecs, PageStage: PageStageDecoder}
	if src != nil {
		cfg.History = &History{Store: src, Peer: dstName}
	}
	if dst != nil {
		dcfg.History = &History{Store: dst, Peer: srcName}
	}
	return transfer(t, bytes.NewReader(stream), cfg, dcfg, nil)
}

func mustDeliver(t *testing.T, r *result, stream []byte) {
	t.Helper()
	if r.srcErr != nil || r.dstErr != nil {
		t.Fatalf("send: %v, receive: %v", r.srcErr, r.dstErr)
	}
	if !bytes.Equal(r.out.Bytes(), stream) {
		t.Fatalf("destination got %d bytes, not the %d stream bytes", r.out.Len(), len(stream))
	}
}

// A guest migrates A->B, then, modified, back B->A: the second hop sends
// every unchanged page as a reference to the first session, byte-exact, in
// a fraction of the bytes; a third hop uses both sessions.
func TestHistoryBackAndForth(t *testing.T) {
	mem1 := guestMemory(1)
	s1 := guestStream(mem1)
	mem2 := modify(mem1, 2)
	s2 := guestStream(mem2)
	zero := make([]byte, pagestage.PageSize)
	// Every unchanged non-zero page travels as a reference.
	wantKnown := uint64(0)
	onlyChanged := make([][]byte, len(mem2))
	for i := range mem2 {
		onlyChanged[i] = zero
		if !bytes.Equal(mem1[i], mem2[i]) {
			onlyChanged[i] = mem2[i]
		} else if !bytes.Equal(mem2[i], zero) {
			wantKnown++
		}
	}
	sc := guestStream(onlyChanged)
	for _, c := range []struct {
		name   string
		policy Policy
		slack  float64
	}{
		// Baselines in the same run, to a fresh host without history:
		// the same stream, and a stream of only what changed (unchanged
		// pages zeroed: they travel as QEMU's zero-page records). With
		// history the hop may cost what changed plus the references and
		// their frames. Without a codec the bound is exact: a KNOWN
		// record is 17-19 bytes (tag, address, 16-byte hash), so 20 bytes
		// a page, and a frame's header is at most 42 bytes (a batch's 29,
		// a checkpoint's 42). With
		// zstd the hashes do not compress and make the pages around them
		// compress a little worse (they share zstd's literal blocks), so
		// 15 % of slack.
		{"stored", FixedPolicy{}, 1.0},
		{"zstd", FixedPolicy{Codec: 1, Level: 3}, 1.15},
	} {
		t.Run(c.name, func(t *testing.T) {
			a, b := openStore(t, t.TempDir()), openStore(t, t.TempDir())
			defer a.Close()
			defer b.Close()
			r1 := hopWith(t, s1, a, b, "A", "B", c.policy)
			mustDeliver(t, r1, s1)
			if !r1.src.History.Recording || !r1.dst.History.Recording || r1.src.History.Session == "" ||
				r1.src.History.Session != r1.dst.History.Session || r1.src.Pages.Known != 0 {
				t.Fatalf("first hop history: source %+v destination %+v, %d known pages", r1.src.History, r1.dst.History, r1.src.Pages.Known)
			}
			ha, hb := waitHeld(t, a, "B", 1), waitHeld(t, b, "A", 1)
			if ha[0].ID != hb[0].ID || ha[0].Digest != hb[0].Digest || ha[0].Pages != hb[0].Pages || ha[0].Pages != uint64(nonZero(mem1)) {
				t.Fatalf("A holds %+v, B holds %+v; want the same session of %d pages", ha, hb, nonZero(mem1))
			}

			r2 := hopWith(t, s2, b, a, "B", "A", c.policy)
			mustDeliver(t, r2, s2)
			if r2.src.Pages.Known != wantKnown || r2.src.History.Sessions != 1 || r2.dst.History.Sessions != 1 {
				t.Fatalf("second hop: %d known pages, want %d; history source %+v destination %+v", r2.src.Pages.Known, wantKnown, r2.src.History, r2.dst.History)
			}
			r0 := hopWith(t, s2, nil, nil, "B", "C", c.policy)
			mustDeliver(t, r0, s2)
			rc := hopWith(t, sc, nil, nil, "B", "C", c.policy)
			mustDeliver(t, rc, sc)
			bound := float64(rc.src.WireBytes+20*wantKnown+42*(r2.src.Batches+r2.src.Checkpoints)) * c.slack
			t.Logf("B->A: %d wire bytes with history, %d without (%.3fx); changed pages alone %d; bound %.0f; %d of %d pages known",
				r2.src.WireBytes, r0.src.WireBytes, float64(r2.src.WireBytes)/float64(r0.src.WireBytes), rc.src.WireBytes, bound, r2.src.Pages.Known, r2.src.Pages.Pages)
			if float64(r2.src.WireBytes) > bound {
				t.Fatalf("with history the hop sent %d bytes, more than the changed pages (%d) and 20 bytes per reference (bound %.0f)",
					r2.src.WireBytes, rc.src.WireBytes, bound)
			}
			waitHeld(t, a, "B", 2)
			waitHeld(t, b, "A", 2)

			// A third hop of the same memory uses both sessions: every
			// page is known.
			r3 := hopWith(t, s2, a, b, "A", "B", c.policy)
			mustDeliver(t, r3, s2)
			if r3.src.History.Sessions != 2 || r3.src.Pages.Known != uint64(nonZero(mem2)) {
				t.Fatalf("third hop: history %+v, %d known of %d non-zero pages", r3.src.History, r3.src.Pages.Known, nonZero(mem2))
			}
		})
	}
}

// Sessions the two hosts do not both hold are not used, and the session
// goes on with what they share.
func TestHistoryHostsThatDisagree(t *testing.T) {
	dirA, dirB := t.TempDir(), t.TempDir()
	a, b := openStore(t, dirA), openStore(t, dirB)
	defer func() { a.Close() }()
	defer func() { b.Close() }()
	mem1 := guestMemory(3)
	s1 := guestStream(mem1)
	mustDeliver(t, hop(t, s1, a, b, "A", "B"), s1)
	waitHeld(t, a, "B", 1)
	waitHeld(t, b, "A", 1)
	// B loses the session (as if evicted).
	b.Close()
	dirs, _ := filepath.Glob(filepath.Join(dirB, "s-*"))
	for _, d := range dirs {
		os.RemoveAll(d)
	}
	b = openStore(t, dirB)

	// B->A: A offers the session, B does not hold it: nothing known.
	mem2 := modify(mem1, 4)
	s2 := guestStream(mem2)
	r2 := hop(t, s2, b, a, "B", "A")
	mustDeliver(t, r2, s2)
	if r2.dst.History.Sessions != 1 || r2.src.History.Sessions != 0 || r2.src.Pages.Known != 0 {
		t.Fatalf("B->A: destination offered %d sessions, source used %d, %d known pages", r2.dst.History.Sessions, r2.src.History.Sessions, r2.src.Pages.Known)
	}
	waitHeld(t, a, "B", 2)
	waitHeld(t, b, "A", 1)

	// A->B: A holds both sessions, B only the second: only it is used.
	r3 := hop(t, s2, a, b, "A", "B")
	mustDeliver(t, r3, s2)
	if r3.src.History.Sessions != 1 || r3.src.Pages.Known != uint64(nonZero(mem2)) {
		t.Fatalf("A->B: used %d sessions, %d known pages of %d", r3.src.History.Sessions, r3.src.Pages.Known, nonZero(mem2))
	}

	// A host without history (or an old one) on either side: the session
	// runs as before and nothing is recorded.
	mustDeliver(t, hop(t, s2, a, nil, "A", "C"), s2)
	r5 := hop(t, s2, nil, a, "C", "A")
	mustDeliver(t, r5, s2)
	if r5.dst.History.Recording || len(a.Held("C")) != 0 {
		t.Fatalf("destination recorded a session whose source keeps no history: %+v", r5.dst.History)
	}
	r6 := hop(t, s2, a, nil, "A", "D")
	mustDeliver(t, r6, s2)
	if r6.src.History.Recording || len(r6.src.History.Problems) == 0 {
		t.Fatalf("source recorded a session the destination does not: %+v", r6.src.History)
	}
	// Raw streams are not recorded.
	raw := bytes.Repeat([]byte("not a QEMU stream "), 100000)
	srcCodecs, dstCodecs := codecsFor()
	rr := transfer(t, bytes.NewReader(raw), SourceConfig{Codecs: srcCodecs, PageStage: DefaultPageStage(), History: &History{Store: a, Peer: "E"}},
		DestConfig{Codecs: dstCodecs, PageStage: PageStageDecoder, History: &History{Store: b, Peer: "A"}}, nil)
	mustDeliver(t, rr, raw)
	if rr.src.History.Session != "" || rr.dst.History.Session != "" {
		t.Fatalf("a raw stream took part in history: %+v %+v", rr.src.History, rr.dst.History)
	}
}

// Histories too small for the guest, of different sizes: both hosts cut
// the session at the same page (the smaller history's capacity), so the
// next hop still uses what they kept.
func TestHistorySmallerThanTheGuest(t *testing.T) {
	a, err := pagestore.Open(t.TempDir(), pagestore.Options{Limit: 2 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := pagestore.Open(t.TempDir(), pagestore.Options{Limit: 3 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	mem1 := guestMemory(7)
	s1 := guestStream(mem1)
	r1 := hop(t, s1, a, b, "A", "B")
	mustDeliver(t, r1, s1)
	ha, hb := waitHeld(t, a, "B", 1), waitHeld(t, b, "A", 1)
	if ha[0].Pages != hb[0].Pages || ha[0].Digest != hb[0].Digest || ha[0].Pages >= uint64(nonZero(mem1)) {
		t.Fatalf("A holds %+v, B holds %+v: want the same session, cut short of the guest's %d pages", ha, hb, nonZero(mem1))
	}
	s2 := guestStream(modify(mem1, 8))
	r2 := hop(t, s2, b, a, "B", "A")
	mustDeliver(t, r2, s2)
	if r2.src.History.Sessions != 1 || r2.src.Pages.Known == 0 || r2.src.Pages.Known > ha[0].Pages {
		t.Fatalf("second hop: history %+v, %d known pages (session of %d)", r2.src.History, r2.src.Pages.Known, ha[0].Pages)
	}
	t.Logf("sessions of %d pages (of %d); second hop: %d known", ha[0].Pages, nonZero(mem1), r2.src.Pages.Known)
}

// A destination whose history lost or garbled a page fails the session
// cleanly: the source hears why, nothing unverified is delivered, nothing
// of the failed session is recorded, and the garbled session is dropped so
// that the next session works.
func TestHistoryGarbledDestinationFailsCleanly(t *testing.T) {
	dirA := t.TempDir()
	a, b := openStore(t, dirA), openStore(t, t.TempDir())
	defer a.Close()
	defer b.Close()
	mem1 := guestMemory(5)
	s1 := guestStream(mem1)
	mustDeliver(t, hop(t, s1, a, b, "A", "B"), s1)
	waitHeld(t, a, "B", 1)
	waitHeld(t, b, "A", 1)

	// Zero one page of A's copy (a lost sector), far into the session.
	dirs, _ := filepath.Glob(filepath.Join(dirA, "s-*"))
	if len(dirs) != 1 {
		t.Fatalf("session directories %v", dirs)
	}
	f, err := os.OpenFile(filepath.Join(dirs[0], "data"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, pagestage.PageSize), 900*pagestage.PageSize); err != nil {
		t.Fatal(err)
	}
	f.Close()

	r := hop(t, s1, b, a, "B", "A")
	if r.srcErr == nil || r.dstErr == nil {
		t.Fatalf("a garbled history went unnoticed: send %v, receive %v", r.srcErr, r.dstErr)
	}
	if !errors.Is(r.dstErr, pagestage.ErrUnknownBase) || !errors.Is(r.dstErr, pagestore.ErrCorrupt) || !errors.Is(r.srcErr, ErrAborted) {
		t.Fatalf("errors: send %v; receive %v", r.srcErr, r.dstErr)
	}
	if !bytes.HasPrefix(s1, r.out.Bytes()) || r.out.Len() == len(s1) {
		t.Fatalf("destination delivered %d bytes that are not a strict verified prefix", r.out.Len())
	}
	t.Logf("send: %v\nreceive: %v\ndelivered %d verified bytes", r.srcErr, r.dstErr, r.out.Len())
	// The failed session is not kept on either side; A's garbled one is
	// dropped; the next session runs without it.
	// (waitHeld fails the test if the count never settles there.)
	waitHeld(t, a, "B", 0)
	waitHeld(t, b, "A", 1)
	r2 := hop(t, s1, b, a, "B", "A")
	mustDeliver(t, r2, s1)
	if r2.src.Pages.Known != 0 {
		t.Fatalf("%d pages sent as known after A's session was dropped", r2.src.Pages.Known)
	}
}

// On the captured QEMU streams of the test guest: an earlier capture
// (single.bin) migrated A->B, a later one (later.bin) back B->A.
func TestHistoryRealStreams(t *testing.T) {
	if testing.Short() || historyUnderRace {
		t.Skip("real streams: 360 MB through the pipeline three times")
	}
	dir := testguest.RequireStreams(t)
	first, err := os.ReadFile(filepath.Join(dir, "single.bin"))
	if err != nil {
		t.Fatal(err)
	}
	later, err := os.ReadFile(filepath.Join(dir, "later.bin"))
	if err != nil {
		t.Fatal(err)
	}
	a, b := openStore(t, t.TempDir()), openStore(t, t.TempDir())
	defer a.Close()
	defer b.Close()
	r1 := hop(t, first, a, b, "A", "B")
	mustDeliver(t, r1, first)
	waitHeld(t, a, "B", 1)
	waitHeld(t, b, "A", 1)
	r2 := hop(t, later, b, a, "B", "A")
	mustDeliver(t, r2, later)
	r0 := hop(t, later, nil, nil, "B", "C")
	mustDeliver(t, r0, later)
	ratio := float64(r2.src.WireBytes) / float64(r0.src.WireBytes)
	var sb strings.Builder
	sb.WriteString("later.bin B->A after single.bin A->B (zstd level 3, page stage):\n")
	for _, x := range []struct {
		name string
		r    *result
	}{{"single.bin A->B", r1}, {"later.bin without history", r0}, {"later.bin with history", r2}} {
		p := x.r.src.Pages
		fmt.Fprintf(&sb, "%s: %d stream bytes, %d wire bytes; pages %d: known %d dup %d delta %d full %d stored %d zero %d\n",
			x.name, x.r.out.Len(), x.r.src.WireBytes, p.Pages, p.Known, p.Duplicate, p.Delta, p.Full, p.Stored, p.Zero)
	}
	t.Logf("%swire with history / without: %.3f", sb.String(), ratio)
	// 92 % of later.bin's non-zero pages are in single.bin (docs/pagestage.md).
	if ratio > 0.3 {
		t.Fatalf("history left %.3f of the bytes", ratio)
	}
}
