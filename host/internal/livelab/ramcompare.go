package livelab

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/dwcp/dwcp/host/internal/testguest"
)

// RAMRange is a guest-physical address range [Start, End).
type RAMRange struct{ Start, End uint64 }

// GuestRAM is the RAM of a q35/pc guest of memBytes below 2 GiB, without
// the legacy VGA/ROM hole (0xA0000-0xFFFFF: device and ROM mappings, not
// the guest's RAM contents).
func GuestRAM(memBytes uint64) []RAMRange {
	return []RAMRange{{0, 0xA0000}, {0x100000, memBytes}}
}

// PageDiff is one guest page whose contents differ.
type PageDiff struct {
	Addr uint64 // guest-physical address of the page
	// Bytes is how many of its 4096 bytes differ; First the offset of the
	// first one.
	Bytes, First int
	// SrcZero, DstZero: the page is all zeros on that side.
	SrcZero, DstZero bool
	// Src, Dst: up to 32 bytes from First on each side.
	Src, Dst []byte
}

func (p PageDiff) String() string {
	z := func(b bool) string {
		if b {
			return " (zero page)"
		}
		return ""
	}
	return fmt.Sprintf("page 0x%09x: %d bytes differ, first at +0x%03x; source%s % x; destination%s % x",
		p.Addr, p.Bytes, p.First, z(p.SrcZero), p.Src, z(p.DstZero), p.Dst)
}

// RAMDiff is the result of comparing two guests' RAM.
type RAMDiff struct {
	Compared uint64 // bytes compared
	Pages    int    // pages that differ
	// First are the first differing pages (at most maxListed), in address
	// order.
	First []PageDiff
}

const (
	pageSize   = 4096
	maxListed  = 32
	ramChunk   = 16 << 20
	diffExcept = 32
)

func (d RAMDiff) String() string {
	if d.Pages == 0 {
		return fmt.Sprintf("%d MiB of guest RAM identical", d.Compared>>20)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d of %d pages differ", d.Pages, d.Compared/pageSize)
	for _, p := range d.First {
		b.WriteString("\n  ")
		b.WriteString(p.String())
	}
	if d.Pages > len(d.First) {
		fmt.Fprintf(&b, "\n  ... and %d more", d.Pages-len(d.First))
	}
	return b.String()
}

// CompareRAM reads the ranges of guest-physical memory from two stopped
// QEMUs with QMP pmemsave, a chunk at a time into files under dir (so that
// a large guest does not need its RAM twice on disk), and compares them
// page by page. Both VMs must be stopped (a source in postmigrate, a
// destination left paused) or the comparison means nothing.
func CompareRAM(ctx context.Context, src, dst *testguest.VM, ranges []RAMRange, dir string) (RAMDiff, error) {
	var d RAMDiff
	for _, vm := range []*testguest.VM{src, dst} {
		st, err := vm.Status(ctx)
		if err != nil {
			return d, fmt.Errorf("compare RAM: %w", err)
		}
		if st == "running" {
			return d, fmt.Errorf("compare RAM: a VM is running: its memory moves under the comparison")
		}
	}
	tmp, err := os.MkdirTemp(dir, "ram-")
	if err != nil {
		return d, fmt.Errorf("compare RAM: %w", err)
	}
	defer os.RemoveAll(tmp)
	files := [2]string{filepath.Join(tmp, "src"), filepath.Join(tmp, "dst")}
	for _, r := range ranges {
		if r.End <= r.Start || r.Start%pageSize != 0 || r.End%pageSize != 0 {
			return d, fmt.Errorf("compare RAM: range 0x%x-0x%x is not whole pages", r.Start, r.End)
		}
		for at := r.Start; at < r.End; at += ramChunk {
			n := min(uint64(ramChunk), r.End-at)
			var mem [2][]byte
			for i, vm := range []*testguest.VM{src, dst} {
				if _, err := vm.QMP(ctx, "pmemsave", map[string]any{"val": at, "size": n, "filename": files[i]}); err != nil {
					return d, fmt.Errorf("compare RAM: pmemsave 0x%x+0x%x: %w", at, n, err)
				}
				b, err := os.ReadFile(files[i])
				if err != nil {
					return d, fmt.Errorf("compare RAM: %w", err)
				}
				if uint64(len(b)) != n {
					return d, fmt.Errorf("compare RAM: pmemsave 0x%x+0x%x wrote %d bytes", at, n, len(b))
				}
				mem[i] = b
			}
			d.compare(at, mem[0], mem[1])
			d.Compared += n
		}
	}
	return d, nil
}

// compare adds the differing pages of two equally long page-aligned
// buffers that start at guest address base.
func (d *RAMDiff) compare(base uint64, a, b []byte) {
	for off := 0; off+pageSize <= len(a); off += pageSize {
		pa, pb := a[off:off+pageSize], b[off:off+pageSize]
		if bytes.Equal(pa, pb) {
			continue
		}
		d.Pages++
		if len(d.First) >= maxListed {
			continue
		}
		p := PageDiff{Addr: base + uint64(off), First: -1, SrcZero: isZero(pa), DstZero: isZero(pb)}
		for i := range pa {
			if pa[i] != pb[i] {
				p.Bytes++
				if p.First < 0 {
					p.First = i
				}
			}
		}
		end := min(p.First+diffExcept, pageSize)
		p.Src = append([]byte(nil), pa[p.First:end]...)
		p.Dst = append([]byte(nil), pb[p.First:end]...)
		d.First = append(d.First, p)
	}
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// CPURegisters is every vCPU's register dump (HMP `info registers -a`
// through QMP human-monitor-command): general, segment, control and
// FPU/SSE registers, as the emulator holds them.
func CPURegisters(ctx context.Context, vm *testguest.VM) (string, error) {
	raw, err := vm.QMP(ctx, "human-monitor-command", map[string]any{"command-line": "info registers -a"})
	if err != nil {
		return "", fmt.Errorf("info registers: %w", err)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fmt.Errorf("info registers reply: %w", err)
	}
	return s, nil
}

// DiffLines lists the lines of two dumps that differ, position by
// position ("-" source, "+" destination).
func DiffLines(a, b string) []string {
	la, lb := strings.Split(a, "\n"), strings.Split(b, "\n")
	var out []string
	for i := range max(len(la), len(lb)) {
		var x, y string
		if i < len(la) {
			x = strings.TrimRight(la[i], "\r ")
		}
		if i < len(lb) {
			y = strings.TrimRight(lb[i], "\r ")
		}
		if x != y {
			out = append(out, "- "+x, "+ "+y)
		}
	}
	return out
}
