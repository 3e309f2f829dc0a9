package codecbench

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/dwcp/dwcp/host/internal/benchreport"
	"github.com/dwcp/dwcp/host/modes"
	"github.com/dwcp/dwcp/host/pipeline"
	"github.com/dwcp/dwcp/plugins/lz4/lz4codec"
	"github.com/dwcp/dwcp/plugins/s2/s2codec"
	"github.com/dwcp/dwcp/plugins/zstd/zstdcodec"
	"github.com/dwcp/dwcp/sdk/codec"
	"golang.org/x/sync/errgroup"
)

// Table titles and chart files of section 1.
const (
	TitleDCThroughput = "Datacenter mode: throughput by input size, DWCP against a plain relay"
	TitleDCLatency    = "Datacenter and internet codecs: compress/decompress latency per call"
	TitleDCSessions   = "Datacenter mode: memory and CPU with concurrent sessions, DWCP against a plain relay"

	FigDCThroughput = "codecbench-dc-throughput.svg"
	FigDCSessions   = "codecbench-dc-sessions-cpu.svg"
)

// Datacenter is section 1 of the report: the datacenter pipeline's
// throughput, its codecs' latency and its cost in memory and CPU, each
// against a plain relay of the same bytes measured in the same run.
var Datacenter = benchreport.Part{
	Name:    "codecbench: datacenter data path",
	Tables:  dcTables,
	Figures: dcFigures,
	Run:     runDatacenter,
}

var (
	dcTables  = []string{TitleDCThroughput, TitleDCLatency, TitleDCSessions}
	dcFigures = []string{FigDCThroughput, FigDCSessions}
)

func runDatacenter(ctx context.Context, env *benchreport.Env, s *benchreport.Section) error {
	set, err := codecs(ctx, env)
	if err != nil {
		return err
	}
	dc, err := set.plan(modes.Datacenter)
	if err != nil {
		return err
	}
	inet, err := set.plan(modes.Internet)
	if err != nil {
		return err
	}
	data, err := stream(ctx, env, "single.bin")
	if err != nil {
		reason := fmt.Sprintf("%v: %s", errNoStream, why(err))
		missingAll(s, dcTables, dcFigures, reason)
		return nil
	}
	sessions := []int{1, 10, 50}
	lo, err := newLoopback(ctx, sessions[len(sessions)-1])
	if err != nil {
		return err
	}
	defer lo.Close()
	if err := dcThroughput(ctx, env, s, set, dc, lo, data); err != nil {
		return err
	}
	if err := codecLatency(ctx, env, s, set, []plan{dc, inet}, data); err != nil {
		return err
	}
	return dcSessions(ctx, env, s, set, dc, lo, data, sessions)
}

// runTriple measures one input through DWCP and both relays, runs times,
// interleaved so that a busy moment of the machine hits all three.
type triple struct {
	dwcp, tlsRelay, tcpRelay []float64 // MB/s per run
	wire                     uint64
	pages                    pipeline.PageStats
}

func measureTriple(ctx context.Context, lo *loopback, data []byte, src pipeline.SourceConfig, dst pipeline.DestConfig, streams, runs int) (triple, error) {
	var t triple
	for range runs {
		p, err := lo.session(ctx, streams)
		if err != nil {
			return t, err
		}
		res, err := p.run(ctx, data, src, dst)
		p.Close()
		if err != nil {
			return t, err
		}
		t.dwcp = append(t.dwcp, benchreport.MBps(int64(len(data)), res.Elapsed))
		t.wire, t.pages = res.Summary.WireBytes, res.Summary.Pages
		for _, useTLS := range []bool{true, false} {
			r, err := lo.relay(ctx, useTLS)
			if err != nil {
				return t, err
			}
			d, err := r.run(ctx, data)
			r.Close()
			if err != nil {
				return t, err
			}
			if useTLS {
				t.tlsRelay = append(t.tlsRelay, benchreport.MBps(int64(len(data)), d))
			} else {
				t.tcpRelay = append(t.tcpRelay, benchreport.MBps(int64(len(data)), d))
			}
		}
	}
	return t, nil
}

func dcThroughput(ctx context.Context, env *benchreport.Env, s *benchreport.Section, set *codecSet, dc plan, lo *loopback, data []byte) error {
	sizes := []int{64 << 10, 256 << 10, 1 << 20, 10 << 20, 100 << 20}
	runs := benchreport.Pick(env, 3, 5)
	bigRuns := benchreport.Pick(env, 1, 3)
	t := &benchreport.Table{
		Title: TitleDCThroughput,
		Columns: []string{"input", "bytes", "DWCP MB/s", "TLS relay MB/s", "TCP relay MB/s",
			"DWCP ÷ TLS relay", "DWCP ÷ TCP relay", "stream ÷ wire bytes"},
	}
	chart := &benchreport.LineChart{
		Title: "Datacenter mode throughput by input size (loopback)", XLabel: "input size (MiB)", YLabel: "MB/s",
		LogX: true, Series: []benchreport.Series{{Name: "DWCP datacenter pipeline"}, {Name: "TLS 1.3 relay (io.Copy)"}, {Name: "TCP relay (io.Copy)"}},
	}
	type input struct {
		label string
		data  []byte
		kind  pipeline.Kind
		runs  int
	}
	var inputs []input
	for _, n := range sizes {
		if n > len(data) {
			t.AddRow(benchreport.Text(benchreport.FormatBytes(float64(n))+" prefix"), benchreport.Missing(fmt.Sprintf("the real stream has only %d bytes", len(data))),
				benchreport.Missing("no input"), benchreport.Missing("no input"), benchreport.Missing("no input"), benchreport.Missing("no input"), benchreport.Missing("no input"), benchreport.Missing("no input"))
			continue
		}
		r := runs
		if n >= 100<<20 {
			r = bigRuns
		}
		inputs = append(inputs, input{benchreport.FormatBytes(float64(n)) + " prefix", data[:n], pipeline.KindRaw, r})
	}
	inputs = append(inputs, input{"whole stream (QEMU-aware)", data, pipeline.KindAuto, bigRuns})
	for _, in := range inputs {
		env.Logf("    datacenter throughput: %s, %d runs ...", in.label, in.runs)
		tr, err := measureTriple(ctx, lo, in.data, dc.source(set, in.kind), set.dest(), dc.Settings.Streams, in.runs)
		if err != nil {
			s.Add(t)
			return fmt.Errorf("datacenter throughput, %s: %w", in.label, err)
		}
		d, tl, tc := benchreport.Summarize(tr.dwcp), benchreport.Summarize(tr.tlsRelay), benchreport.Summarize(tr.tcpRelay)
		t.AddRow(benchreport.Text(in.label), benchreport.Textf("%d", len(in.data)), d.Cell(1, ""), tl.Cell(1, ""), tc.Cell(1, ""),
			ratio(d.Median, tl.Median), ratio(d.Median, tc.Median), ratio(float64(len(in.data)), float64(tr.wire)))
		if in.kind == pipeline.KindRaw {
			chart.X = append(chart.X, float64(len(in.data))/(1<<20))
			chart.XTicks = append(chart.XTicks, benchreport.FormatBytes(float64(len(in.data))))
			chart.Series[0].Values = append(chart.Series[0].Values, d.Median)
			chart.Series[1].Values = append(chart.Series[1].Values, tl.Median)
			chart.Series[2].Values = append(chart.Series[2].Values, tc.Median)
		}
	}
	t.How = fmt.Sprintf("Input: prefixes of the real QEMU 7.2 migration stream of the test guest (single.bin, %d bytes), and the whole stream. "+
		"DWCP: %s; the codec runs in its plugin process. A prefix is not a complete QEMU stream, so the pipeline carries it as raw bytes "+
		"(the datacenter page stage, which only elides zero pages, runs on the whole stream only; QEMU already sends zero pages as flag records). "+
		"pipeline.Send on one transport session (mutual TLS 1.3, loopback) and pipeline.Receive on the other end, both in this process, "+
		"timed from the start of Send until the destination confirmed every byte verified (BLAKE3) and delivered; the session is opened before the clock starts. "+
		"Relays: the same bytes written with io.Copy into one loopback TCP connection, with and without TLS 1.3 (same certificates), and read with io.Copy, "+
		"handshake before the clock. Every receiver compares each delivered byte with the input. "+
		"%d runs per prefix up to 10 MiB, %d for 100 MiB and the whole stream, interleaved DWCP/TLS/TCP; cells are median (min–max, n); "+
		"ratios are of the medians. In --quick mode the 100 MiB prefix and the whole stream run once.",
		len(data), dc.describe(), runs, bigRuns)
	s.Add(t)
	if len(chart.X) > 0 {
		s.Add(&benchreport.Figure{Title: "Datacenter mode: throughput by input size", File: FigDCThroughput, Chart: chart,
			How: "Median MB/s of the prefixes in the table above (log X axis); same runs."})
	} else {
		s.Note("Chart %s: not drawn: no prefix could be measured.", FigDCThroughput)
	}
	return nil
}

// inProcess returns the same codec linked into this process, the baseline
// a plugin's per-call cost is compared with.
func inProcess(algo string) (codec.Codec, bool) {
	switch algo {
	case zstdcodec.Algorithm:
		return zstdcodec.New(), true
	case lz4codec.Algorithm:
		return lz4codec.New(), true
	case s2codec.New().Capabilities().Algorithm:
		return s2codec.New(), true
	}
	return nil, false
}

// callTimes encodes and decodes blocks of data with c, calls times, and
// returns the per-call durations and the compression ratio.
func callTimes(c codec.Codec, level int, data []byte, size, calls int) (enc, dec []float64, ratio float64, err error) {
	var in, out int
	var encBuf, decBuf []byte
	for i := range calls {
		off := (i * size) % (len(data) - size + 1)
		src := data[off : off+size]
		t0 := time.Now()
		encBuf, err = c.Encode(encBuf[:0], src, level)
		d := time.Since(t0)
		if err != nil {
			return nil, nil, 0, fmt.Errorf("encode %d bytes: %w", size, err)
		}
		enc = append(enc, d.Seconds()*1e3)
		t0 = time.Now()
		decBuf, err = c.Decode(decBuf[:0], encBuf, size)
		d = time.Since(t0)
		if err != nil {
			return nil, nil, 0, fmt.Errorf("decode %d bytes: %w", size, err)
		}
		if string(decBuf) != string(src) {
			return nil, nil, 0, fmt.Errorf("decode of %d bytes gave different bytes", size)
		}
		dec = append(dec, d.Seconds()*1e3)
		in += size
		out += len(encBuf)
	}
	return enc, dec, float64(in) / float64(out), nil
}

func codecLatency(ctx context.Context, env *benchreport.Env, s *benchreport.Section, set *codecSet, plans []plan, data []byte) error {
	type size struct{ n, calls int }
	sizes := benchreport.Pick(env,
		[]size{{64 << 10, 60}, {1 << 20, 20}, {10 << 20, 5}},
		[]size{{64 << 10, 400}, {1 << 20, 100}, {10 << 20, 20}})
	t := &benchreport.Table{
		Title: TitleDCLatency,
		Columns: []string{"codec (mode)", "block", "calls", "compress P50 ms", "compress P95 ms", "decompress P50 ms", "decompress P95 ms",
			"ratio", "compress P50 ÷ in-process", "decompress P50 ÷ in-process"},
	}
	for _, p := range plans {
		cd, ok := set.byChoice(p.Settings.Start)
		if !ok {
			t.AddRow(benchreport.Textf("store (%v)", p.Mode), benchreport.Missing("the plan stores batches: no codec to time"),
				benchreport.Missing("no codec"), benchreport.Missing("no codec"), benchreport.Missing("no codec"), benchreport.Missing("no codec"),
				benchreport.Missing("no codec"), benchreport.Missing("no codec"), benchreport.Missing("no codec"), benchreport.Missing("no codec"))
			continue
		}
		level := p.Settings.Start.Level
		local, haveLocal := inProcess(cd.Algorithm)
		for _, sz := range sizes {
			if ctx.Err() != nil {
				s.Add(t)
				return ctx.Err()
			}
			if sz.n > len(data) {
				continue
			}
			env.Logf("    codec latency: %s (%v), %s x %d ...", p.Codec, p.Mode, benchreport.FormatBytes(float64(sz.n)), sz.calls)
			enc, dec, r, err := callTimes(cd.Codec, level, data, sz.n, sz.calls)
			if err != nil {
				s.Add(t)
				return fmt.Errorf("plugin %s: %w", p.Codec, err)
			}
			es, ds := benchreport.Summarize(enc), benchreport.Summarize(dec)
			encRatio, decRatio := benchreport.Missing("no in-process build of "+cd.Algorithm), benchreport.Missing("no in-process build of "+cd.Algorithm)
			if haveLocal {
				lenc, ldec, _, err := callTimes(local, level, data, sz.n, sz.calls)
				if err != nil {
					s.Add(t)
					return fmt.Errorf("in-process %s: %w", p.Codec, err)
				}
				encRatio = ratio(es.Median, benchreport.Summarize(lenc).Median)
				decRatio = ratio(ds.Median, benchreport.Summarize(ldec).Median)
			}
			t.AddRow(benchreport.Textf("%s (%v)", p.Codec, p.Mode), benchreport.Text(benchreport.FormatBytes(float64(sz.n))), benchreport.Textf("%d", sz.calls),
				benchreport.Num(es.Median, 3), benchreport.Num(es.P95, 3), benchreport.Num(ds.Median, 3), benchreport.Num(ds.P95, 3),
				benchreport.Num(r, 2), encRatio, decRatio)
		}
	}
	t.How = "Input: consecutive blocks of the real QEMU stream (single.bin) of the given size, one block per call. " +
		"Each call is one Encode then one Decode of that block through the codec plugin process (host/pluginhost, shared-memory data path), " +
		"from one goroutine, timed per call; the decoded block is compared with the input. Codecs: the starting codec and level that " +
		"host/modes.Plan picks for datacenter and for internet mode. Baseline, same run, same blocks and calls: the same codec package " +
		"linked into this process; the last two columns are the plugin's median per-call time over the in-process median."
	s.Add(t)
	return nil
}

// sessionRun is one row of the sessions table.
type sessionRun struct {
	path    string
	moved   int64
	elapsed time.Duration
	use     usage
}

func dcSessions(ctx context.Context, env *benchreport.Env, s *benchreport.Section, set *codecSet, dc plan, lo *loopback, data []byte, counts []int) error {
	per := benchreport.Pick(env, 4<<20, 32<<20)
	per = min(per, len(data))
	t := &benchreport.Table{
		Title: TitleDCSessions,
		Columns: []string{"sessions", "path", "bytes moved", "wall s", "aggregate MB/s", "host RSS peak (+ over start)",
			"codec plugins RSS peak (+ over start)", "host CPU s", "plugins CPU s", "CPU ms per MB", "CPU ÷ TCP relay"},
	}
	chart := &benchreport.BarChart{Title: "CPU per MB moved by concurrent sessions", YLabel: "CPU ms per MB (host + plugins)"}
	series := map[string]*benchreport.Series{}
	var exact = true
	for _, n := range counts {
		chart.Categories = append(chart.Categories, fmt.Sprintf("%d sessions", n))
		var tcpCPU float64
		for _, path := range []string{"TCP relay", "TLS relay", "DWCP"} {
			env.Logf("    datacenter sessions: %d x %s of %s ...", n, path, benchreport.FormatBytes(float64(per)))
			r, err := runSessions(ctx, set, dc, lo, data, per, n, path)
			if err != nil {
				s.Add(t)
				return fmt.Errorf("%d %s sessions: %w", n, path, err)
			}
			exact = exact && r.use.Exact
			cpu := r.use.HostCPU + r.use.PluginsCPU
			mb := float64(r.moved) / 1e6
			perMB := cpu.Seconds() * 1e3 / mb
			if path == "TCP relay" {
				tcpCPU = perMB
			}
			cpuRatio := ratio(perMB, tcpCPU)
			if tcpCPU == 0 {
				cpuRatio = benchreport.Missing("the TCP relay's CPU time was below /proc's 10 ms resolution")
			}
			pluginCell := benchreport.Textf("%s (%+.1f MiB)", benchreport.FormatBytes(float64(r.use.PluginsPeak)), float64(r.use.PluginsPeak-r.use.PluginsBefore)/(1<<20))
			t.AddRow(benchreport.Textf("%d", n), benchreport.Text(path), benchreport.Text(benchreport.FormatBytes(float64(r.moved))),
				benchreport.Num(r.elapsed.Seconds(), 3), benchreport.Num(benchreport.MBps(r.moved, r.elapsed), 1),
				benchreport.Textf("%s (%+.1f MiB)", benchreport.FormatBytes(float64(r.use.HostPeak)), float64(r.use.HostPeak-r.use.HostBefore)/(1<<20)),
				pluginCell, benchreport.Num(r.use.HostCPU.Seconds(), 2), benchreport.Num(r.use.PluginsCPU.Seconds(), 2),
				benchreport.Num(perMB, 2), cpuRatio)
			if series[path] == nil {
				series[path] = &benchreport.Series{Name: path}
			}
			series[path].Values = append(series[path].Values, perMB)
		}
	}
	for _, p := range []string{"DWCP", "TLS relay", "TCP relay"} {
		if series[p] != nil {
			chart.Series = append(chart.Series, *series[p])
		}
	}
	peak := "VmHWM after resetting it through /proc/PID/clear_refs before the run"
	if !exact {
		peak = "the largest VmRSS sampled every 20 ms (VmHWM could not be reset here)"
	}
	t.How = fmt.Sprintf("Each session moves %s of the real QEMU stream (single.bin; session i starts at offset i×%s, wrapping), all sessions at once. "+
		"DWCP: one transport session per migration (mutual TLS 1.3 on loopback, opened before the clock) carrying pipeline.Send → pipeline.Receive "+
		"with %s; all sessions share the codec plugin processes, as on a host. Relays: one loopback TCP connection per session, with or without "+
		"TLS 1.3, io.Copy on both ends. Both ends of every path run in this process. Memory: host = this process, plugins = the sum over the "+
		"codec plugin processes (pids from pluginhost.Plugin.Pid); peak is %s; start is VmRSS just before the run, after a GC that returned free "+
		"memory to the OS (the host's start includes the loaded real stream). CPU: utime+stime from /proc/PID/stat (10 ms resolution) before and "+
		"after, host plus plugins, per MB (10^6 bytes) moved. One run per row; rows run one after another.",
		benchreport.FormatBytes(float64(per)), benchreport.FormatBytes(float64(per)), dc.describe(), peak)
	s.Add(t)
	s.Add(&benchreport.Figure{Title: "Datacenter mode: CPU per MB moved by concurrent sessions", File: FigDCSessions, Chart: chart,
		How: "CPU ms per MB from the table above (host + codec plugins); one run per bar."})
	return nil
}

func runSessions(ctx context.Context, set *codecSet, dc plan, lo *loopback, data []byte, per, n int, path string) (sessionRun, error) {
	inputs := make([][]byte, n)
	for i := range inputs {
		off := (i * per) % (len(data) - per + 1)
		inputs[i] = data[off : off+per]
	}
	// Open every connection first: the measurement is the transfer.
	var dwcps []*dwcpPair
	var relays []*relayPair
	defer func() {
		for _, p := range dwcps {
			p.Close()
		}
		for _, r := range relays {
			r.Close()
		}
	}()
	for range n {
		if path == "DWCP" {
			p, err := lo.session(ctx, dc.Settings.Streams)
			if err != nil {
				return sessionRun{}, err
			}
			dwcps = append(dwcps, p)
		} else {
			r, err := lo.relay(ctx, path == "TLS relay")
			if err != nil {
				return sessionRun{}, err
			}
			relays = append(relays, r)
		}
	}
	runtime.GC()
	debug.FreeOSMemory()
	m, err := startMeter(set.pids())
	if err != nil {
		return sessionRun{}, err
	}
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	for i := range n {
		g.Go(func() error {
			if path == "DWCP" {
				_, err := dwcps[i].run(gctx, inputs[i], dc.source(set, pipeline.KindRaw), set.dest())
				return err
			}
			_, err := relays[i].run(gctx, inputs[i])
			return err
		})
	}
	err = g.Wait()
	elapsed := time.Since(start)
	use, merr := m.Stop()
	if err != nil {
		return sessionRun{}, err
	}
	if merr != nil {
		return sessionRun{}, merr
	}
	return sessionRun{path: path, moved: int64(n * per), elapsed: elapsed, use: use}, nil
}

// ratio is a/b as "1.23x", or missing without a baseline.
func ratio(a, b float64) benchreport.Cell {
	if b == 0 || math.IsNaN(a) || math.IsNaN(b) || math.IsInf(a/b, 0) {
		return benchreport.Missing(fmt.Sprintf("no baseline (%.3g / %.3g)", a, b))
	}
	return benchreport.Ratio(a / b)
}
