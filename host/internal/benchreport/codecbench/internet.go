package codecbench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"time"

	"github.com/dwcp/dwcp/host/internal/benchreport"
	"github.com/dwcp/dwcp/host/modes"
	"github.com/dwcp/dwcp/host/pagestage"
	"github.com/dwcp/dwcp/host/pipeline"
	"github.com/dwcp/dwcp/host/qemustream"
	"github.com/dwcp/dwcp/sdk/conformance"
)

// Table titles and chart files of section 2's codec parts.
const (
	TitlePatterns = "Internet mode: ratio and savings by data pattern"
	TitleTiers    = "Ratio, throughput and per-batch latency by tier (local, regional, global)"
	TitleDelta    = "Delta encoding of re-sent pages against full compression"

	FigPatterns  = "codecbench-patterns-ratio.svg"
	FigTierRatio = "codecbench-tiers-ratio.svg"
	FigTierSpeed = "codecbench-tiers-throughput.svg"
	FigDelta     = "codecbench-delta-wire.svg"
)

var (
	inetTables  = []string{TitlePatterns, TitleTiers, TitleDelta}
	inetFigures = []string{FigPatterns, FigTierRatio, FigTierSpeed, FigDelta}
)

// InternetCodecs is the codec part of section 2: what the internet
// pipeline saves by data pattern, the three tiers side by side, and delta
// encoding of re-sent pages.
var InternetCodecs = benchreport.Part{
	Name:    "codecbench: internet codecs",
	Tables:  inetTables,
	Figures: inetFigures,
	Run:     runInternet,
}

// patternNames are the report's patterns: the real stream first.
var patternNames = []string{"real VM stream", conformance.PatternZeros, conformance.PatternRandom, conformance.PatternRepeating, conformance.PatternSparse}

func runInternet(ctx context.Context, env *benchreport.Env, s *benchreport.Section) error {
	set, err := codecs(ctx, env)
	if err != nil {
		return err
	}
	var plans []plan
	for _, m := range modes.Modes {
		p, err := set.plan(m)
		if err != nil {
			return err
		}
		plans = append(plans, p)
	}
	data, err := stream(ctx, env, "single.bin")
	if err != nil {
		missingAll(s, inetTables, inetFigures, fmt.Sprintf("%v: %s", errNoStream, why(err)))
		return nil
	}
	lo, err := newLoopback(ctx, 1)
	if err != nil {
		return err
	}
	defer lo.Close()
	inet := plans[2]
	return errors.Join(
		patternRatios(ctx, env, s, set, inet, lo, data),
		tiers(ctx, env, s, set, plans, lo, data),
		deltaPages(ctx, env, s, set, inet, data),
	)
}

// pageOffsets returns the stream offset of every RAM page's data.
func pageOffsets(data []byte) ([]int64, error) {
	r := qemustream.NewReader(bytes.NewReader(data), qemustream.Options{})
	var offs []int64
	for {
		it, err := r.Next()
		if errors.Is(err, io.EOF) {
			return offs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read the real stream: %w", err)
		}
		if it.Kind == qemustream.Page && len(it.Bytes) == pagestage.PageSize {
			offs = append(offs, it.Offset)
		}
	}
}

// withPattern copies the stream into dst with every RAM page's data
// replaced by the pattern's pages in order: a valid QEMU stream of a guest
// whose memory holds the pattern. The framing (and QEMU's zero-page
// records) is the real stream's.
func withPattern(dst, data []byte, offs []int64, p conformance.Pattern, pages []byte) []byte {
	dst = append(dst[:0], data...)
	p.Fill(pages, 1)
	for i, off := range offs {
		copy(dst[off:off+pagestage.PageSize], pages[i*pagestage.PageSize:])
	}
	return dst
}

func patternRatios(ctx context.Context, env *benchreport.Env, s *benchreport.Section, set *codecSet, inet plan, lo *loopback, data []byte) error {
	offs, err := pageOffsets(data)
	if err != nil {
		s.Add(&benchreport.Table{Title: TitlePatterns, Columns: []string{"result"}, Rows: [][]benchreport.Cell{{benchreport.Missing(why(err))}}})
		return err
	}
	t := &benchreport.Table{
		Title:   TitlePatterns,
		Columns: []string{"pattern", "bytes in", "bytes on the wire", "ratio", "savings", "DWCP MB/s", "TLS relay MB/s", "DWCP ÷ relay", "pages zero/dup/delta/full/stored"},
	}
	chart := &benchreport.BarChart{Title: "Internet mode: compression ratio by data pattern", YLabel: "stream bytes ÷ wire bytes",
		Series: []benchreport.Series{{Name: "DWCP internet pipeline (" + inet.Codec + ", every page-stage technique)"}}}
	var buf, pages []byte
	for _, name := range patternNames {
		in := data
		if name != patternNames[0] {
			p, ok := conformance.PatternByName(name)
			if !ok {
				return fmt.Errorf("pattern %q unknown to sdk/conformance", name)
			}
			if pages == nil {
				pages = make([]byte, len(offs)*pagestage.PageSize)
			}
			buf = withPattern(buf, data, offs, p, pages)
			in = buf
		}
		env.Logf("    internet pipeline: pattern %s ...", name)
		tr, err := measureRelayPair(ctx, lo, in, inet.source(set, pipeline.KindQEMU), set.dest(), inet.Settings.Streams)
		if err != nil {
			s.Add(t)
			return fmt.Errorf("pattern %s: %w", name, err)
		}
		sum := tr.res.Summary
		r := float64(sum.BytesIn) / float64(sum.WireBytes)
		dw := benchreport.MBps(int64(len(in)), tr.res.Elapsed)
		rl := benchreport.MBps(int64(len(in)), tr.relay)
		pg := sum.Pages
		t.AddRow(benchreport.Text(name), benchreport.Textf("%d", sum.BytesIn), benchreport.Textf("%d", sum.WireBytes), benchreport.Num(r, 2),
			benchreport.Percent(1-float64(sum.WireBytes)/float64(sum.BytesIn)), benchreport.Num(dw, 1), benchreport.Num(rl, 1), ratio(dw, rl),
			benchreport.Textf("%d/%d/%d/%d/%d", pg.Zero, pg.Duplicate, pg.Delta, pg.Full, pg.Stored))
		chart.Categories = append(chart.Categories, name)
		chart.Series[0].Values = append(chart.Series[0].Values, r)
	}
	t.How = fmt.Sprintf("Input: the real QEMU 7.2 migration stream of the test guest (single.bin, %d bytes, %d RAM page records; QEMU already "+
		"sent the guest's zero pages as flag records), and for each sdk/conformance pattern the same stream with the data of every RAM page "+
		"record replaced by the pattern's pages in order (seed 1): a valid QEMU stream of a guest whose memory holds the pattern. "+
		"DWCP: %s; pipeline.Send → pipeline.Receive over a loopback transport session (mutual TLS 1.3), the stream recognised as QEMU's. "+
		"Bytes on the wire are the pipeline's frame bytes (transport framing and TLS not counted); ratio = bytes in ÷ wire bytes; "+
		"savings = 1 − wire ÷ in. Baseline: the same bytes through one TLS 1.3 loopback connection with io.Copy, same run. One run per pattern "+
		"(ratios are deterministic; speeds are indicative).", len(data), len(offs), inet.describe())
	s.Add(t)
	s.Add(&benchreport.Figure{Title: "Internet mode: compression ratio by data pattern", File: FigPatterns, Chart: chart,
		How: "Ratios from the table above; one run per pattern."})
	return nil
}

// relayPairResult is one DWCP transfer and one TLS relay of the same bytes.
type relayPairResult struct {
	res   transferResult
	relay time.Duration
}

func measureRelayPair(ctx context.Context, lo *loopback, data []byte, src pipeline.SourceConfig, dst pipeline.DestConfig, streams int) (relayPairResult, error) {
	var out relayPairResult
	p, err := lo.session(ctx, streams)
	if err != nil {
		return out, err
	}
	out.res, err = p.run(ctx, data, src, dst)
	p.Close()
	if err != nil {
		return out, err
	}
	r, err := lo.relay(ctx, true)
	if err != nil {
		return out, err
	}
	defer r.Close()
	out.relay, err = r.run(ctx, data)
	return out, err
}

var tierNames = map[modes.Mode]string{modes.Datacenter: "local", modes.Hybrid: "regional", modes.Internet: "global"}

func tiers(ctx context.Context, env *benchreport.Env, s *benchreport.Section, set *codecSet, plans []plan, lo *loopback, data []byte) error {
	runs := benchreport.Pick(env, 1, 3)
	t := &benchreport.Table{
		Title: TitleTiers,
		Columns: []string{"tier", "pipeline (mode's plan)", "ratio", "DWCP MB/s", "TLS relay MB/s", "DWCP ÷ relay",
			"per-batch encode P50 ms", "per-batch encode P95 ms", "P95 ÷ local P95"},
	}
	ratioChart := &benchreport.BarChart{Title: "Compression ratio by tier (real VM stream)", YLabel: "stream bytes ÷ wire bytes", Series: []benchreport.Series{{Name: "DWCP"}}}
	speedChart := &benchreport.BarChart{Title: "Throughput by tier (real VM stream, loopback)", YLabel: "MB/s (median)",
		Series: []benchreport.Series{{Name: "DWCP"}, {Name: "TLS relay"}}}
	var localP95 float64
	for _, p := range plans {
		name := tierNames[p.Mode]
		env.Logf("    tier %s (%v plan, %s), %d runs ...", name, p.Mode, p.Codec, runs)
		var dw, rl, enc []float64
		var r float64
		for range runs {
			tr, err := measureRelayPair(ctx, lo, data, p.source(set, pipeline.KindQEMU), set.dest(), p.Settings.Streams)
			if err != nil {
				s.Add(t)
				return fmt.Errorf("tier %s: %w", name, err)
			}
			dw = append(dw, benchreport.MBps(int64(len(data)), tr.res.Elapsed))
			rl = append(rl, benchreport.MBps(int64(len(data)), tr.relay))
			for _, d := range tr.res.Encode {
				enc = append(enc, d.Seconds()*1e3)
			}
			r = tr.res.Summary.Ratio()
		}
		ds, rs, es := benchreport.Summarize(dw), benchreport.Summarize(rl), benchreport.Summarize(enc)
		if p.Mode == modes.Datacenter {
			localP95 = es.P95
		}
		pages := "off"
		if p.Settings.PageStage {
			pages = (pagestage.AllTechniques &^ p.Settings.PageDisabled).String()
		}
		t.AddRow(benchreport.Text(name), benchreport.Textf("%v: %s, page stage %s, %d KiB batches", p.Mode, p.Codec, pages, p.Settings.BatchBytes>>10),
			benchreport.Num(r, 2), ds.Cell(1, ""), rs.Cell(1, ""), ratio(ds.Median, rs.Median),
			benchreport.Num(es.Median, 2), benchreport.Num(es.P95, 2), ratio(es.P95, localP95))
		ratioChart.Categories = append(ratioChart.Categories, name)
		ratioChart.Series[0].Values = append(ratioChart.Series[0].Values, r)
		speedChart.Categories = append(speedChart.Categories, name)
		speedChart.Series[0].Values = append(speedChart.Series[0].Values, ds.Median)
		speedChart.Series[1].Values = append(speedChart.Series[1].Values, rs.Median)
	}
	t.How = fmt.Sprintf("Tiers are defined as the pipelines DWCP's modes choose: local = datacenter, regional = hybrid, global = internet, each as "+
		"host/modes.Plan picks it for an unmeasured path (the mode's typical link: 10 Gbit/s, 1 Gbit/s, 100 Mbit/s), with the codec held at the "+
		"plan's starting choice. Input: the whole real QEMU stream of the test guest (single.bin, %d bytes). pipeline.Send → pipeline.Receive over "+
		"a loopback transport session (mutual TLS 1.3, the plan's data connections), pipeline workers = GOMAXPROCS; the loopback is not shaped, "+
		"so throughput is what this machine's CPU allows, not what the tier's link would. Per-batch latency: the compression time of each batch "+
		"in the codec plugin (pipeline.BatchResult.Encode, one worker), over all batches of all runs. Baseline: the same bytes through one TLS 1.3 "+
		"loopback connection (io.Copy), same run. %d run(s) per tier; MB/s cells are median (min–max, n).", len(data), runs)
	s.Add(t)
	s.Add(&benchreport.Figure{Title: "Compression ratio by tier", File: FigTierRatio, Chart: ratioChart, How: "Ratios from the table above."})
	s.Add(&benchreport.Figure{Title: "Throughput by tier", File: FigTierSpeed, Chart: speedChart, How: "Median MB/s from the table above, DWCP beside the TLS relay of the same bytes."})
	return nil
}

// deltaCase is one way of changing pages.
type deltaCase struct {
	frac      float64
	clustered bool
}

func (c deltaCase) String() string {
	shape := "scattered bytes"
	if c.clustered {
		shape = "one contiguous run"
	}
	return fmt.Sprintf("%g %% (%s)", 100*c.frac, shape)
}

// mutate changes round(frac*PageSize) bytes of every page: at distinct
// random positions, or as one run at a random offset. Every changed byte
// really differs (XOR with a non-zero value).
func mutate(pages []byte, c deltaCase, rng *rand.Rand) {
	n := max(1, int(c.frac*pagestage.PageSize+0.5))
	perm := make([]int, pagestage.PageSize)
	for i := range perm {
		perm[i] = i
	}
	for p := 0; p+pagestage.PageSize <= len(pages); p += pagestage.PageSize {
		page := pages[p : p+pagestage.PageSize]
		if c.clustered {
			at := rng.IntN(pagestage.PageSize - n + 1)
			for i := range n {
				page[at+i] ^= byte(1 + rng.IntN(255))
			}
			continue
		}
		// The first n steps of a Fisher-Yates shuffle pick n distinct
		// positions.
		for i := range n {
			j := i + rng.IntN(pagestage.PageSize-i)
			perm[i], perm[j] = perm[j], perm[i]
			page[perm[i]] ^= byte(1 + rng.IntN(255))
		}
	}
}

// resendResult is the second pass of a page set: what it cost on the wire
// and in time.
type resendResult struct {
	wire       int
	elapsed    time.Duration
	deltaPages uint64
	pages      uint64
}

// resend runs the page stage as the internet pipeline does (batches of
// batchBytes, each compressible section through the codec plugin) over the
// original pages, then over the changed ones, and measures the second
// pass. It decodes both passes like a destination and checks the bytes.
func resend(cd pipeline.Codec, level int, orig, changed []byte, disabled pagestage.Technique, batchBytes int) (resendResult, error) {
	enc, err := pagestage.NewEncoder(pagestage.Options{Disabled: disabled})
	if err != nil {
		return resendResult{}, err
	}
	dec := pagestage.NewDecoder(pagestage.DecoderOptions{})
	var b pagestage.Batch
	var comp, plain, out []byte
	pass := func(pages []byte) (int, error) {
		wire := 0
		flush := func() error {
			if err := enc.Flush(&b); err != nil {
				return err
			}
			comp, err = cd.Codec.Encode(comp[:0], b.Compressible, level)
			if err != nil {
				return fmt.Errorf("encode batch: %w", err)
			}
			wire += len(comp) + len(b.Stored)
			plain, err = cd.Codec.Decode(plain[:0], comp, len(b.Compressible))
			if err != nil {
				return fmt.Errorf("decode batch: %w", err)
			}
			out, err = dec.Decode(out, pagestage.Batch{Compressible: plain, Stored: b.Stored})
			if err != nil {
				return fmt.Errorf("page stage decode: %w", err)
			}
			return nil
		}
		for p := 0; p < len(pages); p += pagestage.PageSize {
			enc.AddPage("pc.ram", uint64(p), pages[p:p+pagestage.PageSize])
			if enc.Pending() >= batchBytes {
				if err := flush(); err != nil {
					return 0, err
				}
			}
		}
		if enc.Pending() > 0 {
			if err := flush(); err != nil {
				return 0, err
			}
		}
		return wire, nil
	}
	if _, err := pass(orig); err != nil {
		return resendResult{}, err
	}
	if !bytes.Equal(out, orig) {
		return resendResult{}, errors.New("first pass decoded to different bytes")
	}
	out = out[:0]
	before := enc.Stats()
	start := time.Now()
	wire, err := pass(changed)
	elapsed := time.Since(start)
	if err != nil {
		return resendResult{}, err
	}
	if !bytes.Equal(out, changed) {
		return resendResult{}, errors.New("second pass decoded to different bytes")
	}
	after := enc.Stats()
	return resendResult{wire: wire, elapsed: elapsed, deltaPages: after.Pages[pagestage.PageDelta] - before.Pages[pagestage.PageDelta],
		pages: uint64(len(changed) / pagestage.PageSize)}, nil
}

func deltaPages(ctx context.Context, env *benchreport.Env, s *benchreport.Section, set *codecSet, inet plan, data []byte) error {
	cd, ok := set.byChoice(inet.Settings.Start)
	if !ok {
		missingAll(s, []string{TitleDelta}, []string{FigDelta}, "the internet plan stores batches: no codec to compare against")
		return nil
	}
	offs, err := pageOffsets(data)
	if err != nil {
		return err
	}
	n := min(len(offs), benchreport.Pick(env, 2048, 16384))
	orig := make([]byte, 0, n*pagestage.PageSize)
	for _, off := range offs[:n] {
		orig = append(orig, data[off:off+pagestage.PageSize]...)
	}
	level := inet.Settings.Start.Level
	t := &benchreport.Table{
		Title: TitleDelta,
		Columns: []string{"bytes changed per page", "pages", "sent as delta", "wire bytes, delta path", "wire bytes, full compression",
			"full ÷ delta bytes", "ms, delta path", "ms, full compression", "delta ÷ full time"},
	}
	chart := &benchreport.BarChart{Title: "Re-sent pages: bytes on the wire", YLabel: "MiB",
		Series: []benchreport.Series{{Name: "delta against the earlier version + " + inet.Codec}, {Name: "full compression (" + inet.Codec + ")"}}}
	rng := rand.New(rand.NewPCG(1, 2))
	changed := make([]byte, len(orig))
	for _, c := range []deltaCase{{0.01, false}, {0.05, false}, {0.10, false}, {0.01, true}, {0.05, true}, {0.10, true}} {
		if ctx.Err() != nil {
			s.Add(t)
			return ctx.Err()
		}
		env.Logf("    delta: %v of %d pages ...", c, n)
		copy(changed, orig)
		mutate(changed, c, rng)
		d, err := resend(cd, level, orig, changed, 0, inet.Settings.BatchBytes)
		if err != nil {
			s.Add(t)
			return fmt.Errorf("delta %v: %w", c, err)
		}
		f, err := resend(cd, level, orig, changed, pagestage.Delta, inet.Settings.BatchBytes)
		if err != nil {
			s.Add(t)
			return fmt.Errorf("full %v: %w", c, err)
		}
		sent := benchreport.Textf("%d (%.0f %%)", d.deltaPages, 100*float64(d.deltaPages)/float64(d.pages))
		if d.deltaPages == 0 {
			sent = benchreport.Textf("0: no page's delta fit in %d bytes, all sent whole", pagestage.DefaultDeltaMaxBytes)
		}
		t.AddRow(benchreport.Text(c.String()), benchreport.Textf("%d", d.pages), sent, benchreport.Textf("%d", d.wire), benchreport.Textf("%d", f.wire),
			ratio(float64(f.wire), float64(d.wire)), benchreport.Num(d.elapsed.Seconds()*1e3, 1), benchreport.Num(f.elapsed.Seconds()*1e3, 1),
			ratio(d.elapsed.Seconds(), f.elapsed.Seconds()))
		chart.Categories = append(chart.Categories, fmt.Sprintf("%g%% %s", 100*c.frac, map[bool]string{false: "scattered", true: "run"}[c.clustered]))
		chart.Series[0].Values = append(chart.Series[0].Values, float64(d.wire)/(1<<20))
		chart.Series[1].Values = append(chart.Series[1].Values, float64(f.wire)/(1<<20))
	}
	t.How = fmt.Sprintf("Input: the first %d RAM pages of the real QEMU stream of the test guest (single.bin), sent once, then re-sent with the "+
		"given share of each page's bytes changed (XOR with a random non-zero byte; seeded PCG), either at distinct random positions or as one "+
		"contiguous run at a random offset. Both paths run host/pagestage's encoder as the internet pipeline does (batches of %d KiB, each "+
		"compressible section through the %s codec plugin at level %d) over the first pass and then the re-send, which is what is measured: "+
		"'delta path' with every technique on (a re-sent page becomes XOR spans against its cached earlier version when the spans fit in %d bytes, "+
		"pagestage.DefaultDeltaMaxBytes), 'full compression' with the delta technique disabled. Wire bytes = compressed sections + stored "+
		"sections (frame headers not counted). Time = page stage + codec encode + codec decode + page-stage decode of the re-send, one goroutine; "+
		"both passes are decoded and compared byte for byte. One run per row.",
		n, inet.Settings.BatchBytes>>10, cd.Algorithm, level, pagestage.DefaultDeltaMaxBytes)
	s.Add(t)
	s.Add(&benchreport.Figure{Title: "Delta encoding: wire bytes of re-sent pages", File: FigDelta, Chart: chart, How: "Wire bytes from the table above."})
	return nil
}
