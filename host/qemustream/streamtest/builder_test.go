package streamtest

import (
	"bytes"
	"compress/zlib"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
)

// The builder's bytes for a tiny stream, checked against a layout written
// out by hand from savevm.c and ram.c.
func TestBuilderLayout(t *testing.T) {
	b := New(Options{Machine: "pc-q35-7.2", Capabilities: []string{"x-ignore-shared"}, IgnoreShared: true})
	b.Header()
	b.Ping(1)
	id := b.RAMStart([]Block{{Name: "pc.ram", Length: 0x2000, GPA: 0x1000}})
	b.SectionPart(id)
	b.Zero("pc.ram", 0x1000, 0)
	b.Page("pc.ram", 0, bytes.Repeat([]byte{0xab}, 4096))
	b.EOS()
	b.Footer(id)
	b.EOF()
	b.VMDescription([]byte("{}"))

	want := strings.Join([]string{
		"5145564d 00000003",                // QEVM, version 3
		"07 0000000a 70632d7133352d372e32", // CONFIGURATION, machine
		"05 1a 636f6e66696775726174696f6e2f6361706162696c6974696573 00000001", // subsection header
		"00000001 0f 782d69676e6f72652d736861726564",                          // 1 capability
		"08 0002 0004 00000001",                                               // COMMAND PING 1
		"01 00000002 03 72616d 00000000 00000004",                             // START "ram" inst 0 v4
		"0000000000002004 06 70632e72616d 0000000000002000 0000000000001000",  // MEM_SIZE, entry + GPA
		"0000000000000010 7e 00000002",                                        // EOS, footer
		"02 00000002",                                                         // PART
		"0000000000001002 06 70632e72616d 00",                                 // ZERO named
		"0000000000000028",                                                    // PAGE|CONTINUE at 0
	}, "")
	want = strings.ReplaceAll(want, " ", "")
	got := b.Bytes()
	head := hex.EncodeToString(got[:len(want)/2])
	if head != want {
		t.Fatalf("layout differs:\n got %s\nwant %s", head, want)
	}
	rest := got[len(want)/2:]
	if !bytes.Equal(rest[:4096], bytes.Repeat([]byte{0xab}, 4096)) {
		t.Fatal("page data differs")
	}
	tail := hex.EncodeToString(rest[4096:])
	if tail != "0000000000000010"+"7e00000002"+"00"+"06000000027b7d" {
		t.Fatalf("tail %s", tail)
	}
	if len(b.Records) != 2 || b.Records[1].DataOffset != int64(len(want)/2) || !b.Records[1].Continue || b.Records[0].Continue {
		t.Fatalf("records %+v", b.Records)
	}
}

// decodeXBZRLE is the inverse of EncodeXBZRLE, written from the format
// description so that the encoder is checked against it.
func decodeXBZRLE(t *testing.T, prev, enc []byte) []byte {
	out := append([]byte(nil), prev...)
	uleb := func() int {
		v, s := 0, 0
		for {
			c := enc[0]
			enc = enc[1:]
			v |= int(c&0x7f) << s
			if c < 0x80 {
				return v
			}
			s += 7
		}
	}
	i := 0
	for len(enc) > 0 {
		i += uleb()
		n := uleb()
		copy(out[i:i+n], enc[:n])
		enc = enc[n:]
		i += n
	}
	if i > len(out) {
		t.Fatalf("decoded past the page: %d", i)
	}
	return out
}

func TestEncodeXBZRLERoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	prev := make([]byte, 4096)
	for trial := 0; trial < 200; trial++ {
		FillPage(prev, Content(rng.IntN(int(NumContents))), rng)
		cur := append([]byte(nil), prev...)
		for n := rng.IntN(300); n > 0; n-- {
			cur[rng.IntN(len(cur))] = byte(rng.IntN(256))
		}
		enc := EncodeXBZRLE(prev, cur, 4096)
		if enc == nil {
			continue
		}
		if got := decodeXBZRLE(t, prev, enc); !bytes.Equal(got, cur) {
			t.Fatalf("trial %d: round trip differs", trial)
		}
	}
	same := EncodeXBZRLE(prev, prev, 4096)
	if len(same) != 0 {
		t.Fatalf("identical pages encode to %d bytes", len(same))
	}
	other := make([]byte, 4096)
	FillPage(other, ContentRandom, rng)
	if EncodeXBZRLE(prev, other, 2048) != nil {
		t.Fatal("a delta over the limit was not refused")
	}
}

func TestCompressRoundTrip(t *testing.T) {
	page := make([]byte, 4096)
	FillPage(page, ContentText, rand.New(rand.NewPCG(5, 6)))
	z, err := zlib.NewReader(bytes.NewReader(Compress(page)))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(z)
	if err != nil || !bytes.Equal(got, page) {
		t.Fatalf("round trip: %v", err)
	}
}

func TestFillPageContents(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	p := make([]byte, 4096)
	ratio := func() float64 { return float64(len(p)) / float64(len(Compress(p))) }
	nonzero := func() int { return len(p) - bytes.Count(p, []byte{0}) }

	FillPage(p, ContentZero, rng)
	if nonzero() != 0 {
		t.Fatal("zero page has non-zero bytes")
	}
	FillPage(p, ContentRandom, rng)
	if r := ratio(); r > 1.01 {
		t.Fatalf("random page compresses %.2fx", r)
	}
	FillPage(p, ContentRepeating, rng)
	if r := ratio(); r < 10 {
		t.Fatalf("repeating page compresses only %.2fx", r)
	}
	FillPage(p, ContentSparse, rng)
	if n := nonzero(); n == 0 || n > len(p)/32 {
		t.Fatalf("sparse page has %d non-zero bytes", n)
	}
	FillPage(p, ContentText, rng)
	for _, c := range p {
		if c != '\n' && (c < ' ' || c > '~') {
			t.Fatalf("text page has byte %#x", c)
		}
	}
	if r := ratio(); r < 2 {
		t.Fatalf("text page compresses only %.2fx", r)
	}
}

func TestGenerateIsDeterministic(t *testing.T) {
	cfg := Config{Seed: 11, DirtyPasses: 2, DirtyPages: 10, FinalDirty: 3, Devices: 2, XBZRLE: true}
	a, b := Generate(cfg).Bytes(), Generate(cfg).Bytes()
	if !bytes.Equal(a, b) {
		t.Fatal("same seed, different streams")
	}
	cfg.Seed = 12
	if bytes.Equal(a, Generate(cfg).Bytes()) {
		t.Fatal("different seeds, same stream")
	}
	g := Generate(cfg)
	if g.Counts.XBZRLE == 0 || g.Counts.Zero == 0 || g.Counts.Page == 0 || g.Counts.Full != 2 || !g.Counts.EOF {
		t.Fatalf("counts %+v", g.Counts)
	}
}
