package main

import (
	"testing"

	"github.com/dwcp/dwcp/host/pipeline"
)

func TestEffectiveRate(t *testing.T) {
	const link = 12.5e6 // 100 Mbit/s
	for _, c := range []struct {
		name string
		link float64
		sum  pipeline.Summary
		want uint64
	}{
		{"no link estimate: leave QEMU as it is", 0, pipeline.Summary{}, 0},
		{"before any data: the guessed ratio of 3", link, pipeline.Summary{}, uint64(link * 3 * 1.25)},
		{"under 256 KiB on the wire: still the guess", link, pipeline.Summary{BytesIn: 20 << 20, WireBytes: 200 << 10}, uint64(link * 3 * 1.25)},
		{"past 256 KiB: the measured ratio", link, pipeline.Summary{BytesIn: 18 << 20, WireBytes: 1 << 20}, uint64(link * 18 * 1.25)},
		{"incompressible: the link's rate", link, pipeline.Summary{BytesIn: 10 << 20, WireBytes: 10 << 20}, uint64(link * 1.25)},
		{"a crawling link: at least 1 MiB/s", 1000, pipeline.Summary{BytesIn: 1 << 20, WireBytes: 1 << 20}, 1 << 20},
	} {
		if got := effectiveRate(c.link, c.sum); got != c.want {
			t.Errorf("%s: effectiveRate(%v, %+v) = %d, want %d", c.name, c.link, c.sum, got, c.want)
		}
	}
}
