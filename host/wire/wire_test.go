package wire

import (
	"bytes"
	"errors"
	"testing"
)

func TestBatchRoundTrip(t *testing.T) {
	h := BatchHeader{Codec: 3, Level: -2, Flags: FlagPages, Offset: 1 << 40, Decoded: 70000, Raw: 65000}
	f := AppendBatch([]byte("prefix"), h, []byte("compressed"), []byte("stored!"))
	if !bytes.HasPrefix(f, []byte("prefix")) {
		t.Fatal("prefix lost")
	}
	got, c, s, err := ParseBatch(f[6:])
	if err != nil {
		t.Fatal(err)
	}
	h.Compressed, h.Stored = 10, 7
	if got != h || string(c) != "compressed" || string(s) != "stored!" {
		t.Fatalf("got %+v %q %q", got, c, s)
	}
}

func TestBatchRejectsMalformed(t *testing.T) {
	good := AppendBatch(nil, BatchHeader{Codec: 1, Offset: 10, Decoded: 5, Raw: 5}, []byte("abc"), []byte("de"))
	cases := map[string][]byte{
		"empty":         nil,
		"short":         good[:10],
		"wrong type":    append([]byte{byte(TypeCheckpoint)}, good[1:]...),
		"truncated":     good[:len(good)-1],
		"trailing":      append(append([]byte(nil), good...), 0),
		"unknown flags": func() []byte { f := append([]byte(nil), good...); f[4] = 0x80; return f }(),
		"huge decoded":  AppendBatch(nil, BatchHeader{Codec: 1, Decoded: MaxBatchDecoded + 1}, nil, nil),
		"overflow":      AppendBatch(nil, BatchHeader{Codec: 1, Offset: ^uint64(0), Decoded: 2}, nil, nil),
		"stored raw":    AppendBatch(nil, BatchHeader{Codec: 0, Raw: 9}, []byte("abc"), nil),
	}
	for name, f := range cases {
		if _, _, _, err := ParseBatch(f); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
}

func TestEndAndBlob(t *testing.T) {
	for _, final := range []bool{false, true} {
		c := Checkpoint{Length: 123456789, Final: final}
		copy(c.Digest[:], bytes.Repeat([]byte{7}, DigestSize))
		got, err := ParseCheckpoint(AppendCheckpoint(nil, c))
		if err != nil || got != c {
			t.Fatalf("checkpoint: %+v %v", got, err)
		}
	}
	if _, err := ParseCheckpoint(AppendCheckpoint(nil, Checkpoint{})[:20]); !errors.Is(err, ErrMalformed) {
		t.Fatalf("short checkpoint: %v", err)
	}
	bad := AppendCheckpoint(nil, Checkpoint{})
	bad[1] = 2
	if _, err := ParseCheckpoint(bad); !errors.Is(err, ErrMalformed) {
		t.Fatalf("bad flags: %v", err)
	}
	b, err := ParseBlob(AppendBlob(nil, TypeReturn, []byte("rp")), TypeReturn)
	if err != nil || string(b) != "rp" {
		t.Fatalf("blob: %q %v", b, err)
	}
	if _, err := ParseBlob(AppendBlob(nil, TypeReturn, nil), TypeAbort); !errors.Is(err, ErrMalformed) {
		t.Fatalf("wrong blob type: %v", err)
	}
	if TypeOf(nil) != 0 || TypeOf([]byte{5}) != TypeDone || TypeDone.String() != "done" {
		t.Fatal("TypeOf")
	}
}

func FuzzParse(f *testing.F) {
	f.Add(AppendBatch(nil, BatchHeader{Codec: 1, Offset: 10, Decoded: 5, Raw: 5}, []byte("abc"), []byte("de")))
	f.Add(AppendCheckpoint(nil, Checkpoint{Length: 9, Final: true}))
	f.Add(AppendBlob(nil, TypeHello, []byte("x")))
	f.Fuzz(func(t *testing.T, frame []byte) {
		if h, c, s, err := ParseBatch(frame); err == nil {
			again := AppendBatch(nil, h, c, s)
			if !bytes.Equal(again, frame) {
				t.Fatalf("batch does not re-encode to the same bytes")
			}
		}
		if c, err := ParseCheckpoint(frame); err == nil && !bytes.Equal(AppendCheckpoint(nil, c), frame) {
			t.Fatalf("checkpoint does not re-encode to the same bytes")
		}
		for typ := TypeHello; typ <= TypeResult; typ++ {
			_, _ = ParseBlob(frame, typ)
		}
	})
}
