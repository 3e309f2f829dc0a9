package livelab

import (
	"bytes"
	"strings"
	"testing"
)

func TestRAMDiffFindsPagesAndBytes(t *testing.T) {
	const pages = 8
	a := bytes.Repeat([]byte{0x5a}, pages*pageSize)
	b := append([]byte(nil), a...)
	// Page 2: three bytes from +0x10; page 5: zeroed on the destination.
	copy(b[2*pageSize+0x10:], []byte{1, 2, 3})
	clear(b[5*pageSize : 6*pageSize])
	var d RAMDiff
	d.compare(0x100000, a, b)
	if d.Pages != 2 || len(d.First) != 2 {
		t.Fatalf("%d pages differ (%d listed), want 2:\n%s", d.Pages, len(d.First), d)
	}
	p := d.First[0]
	if p.Addr != 0x102000 || p.Bytes != 3 || p.First != 0x10 || p.SrcZero || p.DstZero ||
		!bytes.Equal(p.Dst[:3], []byte{1, 2, 3}) || len(p.Src) != diffExcept {
		t.Errorf("first difference %+v", p)
	}
	if q := d.First[1]; q.Addr != 0x105000 || q.Bytes != pageSize || q.First != 0 || !q.DstZero || q.SrcZero {
		t.Errorf("second difference %+v", q)
	}
	if s := d.String(); !strings.Contains(s, "page 0x000102000: 3 bytes differ, first at +0x010") {
		t.Errorf("report %q does not name the page", s)
	}
	var same RAMDiff
	same.compare(0, a, a)
	same.Compared = uint64(len(a))
	if same.Pages != 0 || !strings.Contains(same.String(), "identical") {
		t.Errorf("identical buffers: %s", same)
	}
}

func TestRAMDiffListsAtMostMaxListed(t *testing.T) {
	a := make([]byte, (maxListed+5)*pageSize)
	b := bytes.Repeat([]byte{1}, len(a))
	var d RAMDiff
	d.compare(0, a, b)
	if d.Pages != maxListed+5 || len(d.First) != maxListed || !strings.Contains(d.String(), "and 5 more") {
		t.Fatalf("%d pages, %d listed: %s", d.Pages, len(d.First), d)
	}
}

func TestDiffLines(t *testing.T) {
	a := "RAX=1 RBX=2\nRIP=ffffffff81000000\nEFL=00000246\n"
	b := "RAX=1 RBX=2\nRIP=0000000000000000\nEFL=00000246 \n"
	got := DiffLines(a, b)
	if len(got) != 2 || got[0] != "- RIP=ffffffff81000000" || got[1] != "+ RIP=0000000000000000" {
		t.Fatalf("%q", got)
	}
	if d := DiffLines(a, a+"extra"); len(d) != 2 || d[1] != "+ extra" {
		t.Fatalf("a longer dump: %q", d)
	}
}
