package livebench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/dwcp/dwcp/host/internal/benchreport"
	"github.com/dwcp/dwcp/host/internal/livelab"
)

// Titles and chart files the parts promise.
const (
	TableGuest       = "Test guest used for the live migrations"
	TableInternet    = "Live migration over internet-like links: DWCP vs QEMU plain"
	TableNative      = "Live migration: DWCP beside QEMU's own methods (plain, xbzrle, multifd+zstd)"
	FigInternetTime  = "livebench-internet-time.svg"
	FigInternetBytes = "livebench-internet-bytes.svg"
	FigNative        = "livebench-native.svg"
)

// InternetMigrations is section 2's live-migration part: migration time,
// downtime and bytes on the link for guests of several sizes over the
// internet-like lab profiles, DWCP against QEMU's plain migration in the
// same lab and run.
var InternetMigrations = benchreport.Part{
	Name:    "live migrations over internet-like links",
	Tables:  []string{TableGuest, TableInternet},
	Figures: []string{FigInternetTime, FigInternetBytes},
	Run:     runInternet,
}

// QEMUNative is section 4's live-migration part: DWCP beside QEMU's own
// migration methods on an internet-like and a datacenter-like profile,
// each as a ratio against QEMU plain measured in the same run.
var QEMUNative = benchreport.Part{
	Name:    "DWCP beside QEMU's own migration",
	Tables:  []string{TableNative},
	Figures: []string{FigNative},
	Run:     runNative,
}

// Quantities of a migration row.
func seconds(r livelab.Row) float64    { return r.Total.Seconds() }
func downtimeMs(r livelab.Row) float64 { return float64(r.Downtime.Microseconds()) / 1000 }
func wireMiB(r livelab.Row) float64    { return float64(r.WireBytes) / (1 << 20) }

func runInternet(ctx context.Context, env *benchreport.Env, s *benchreport.Section) error {
	var cells []*cell
	var errs []error
	for _, size := range guestSizes(env) {
		for _, p := range internetProfiles(env) {
			if ctx.Err() != nil {
				break
			}
			c, err := measure(ctx, env, p, size)
			if err != nil {
				errs = append(errs, err)
			}
			cells = append(cells, c)
		}
	}

	guests := &benchreport.Table{Title: TableGuest, Columns: guestColumns,
		How: "What the guest's memory holds, as the guest itself reported it once its workload ran " +
			"(the `DWCP config` and `DWCP mem` lines of testdata/guest/init.sh) and its QEMU reported " +
			"(query-cpus-fast, query-kvm); one row per guest size, from the first lab that booted it."}
	for _, size := range guestSizes(env) {
		var g *guestInfo
		reason := "not measured"
		for _, c := range cells {
			if c.MemMiB != size {
				continue
			}
			if c.Guest != nil {
				g = c.Guest
				break
			}
			if c.Missing != "" {
				reason = c.Missing
			}
		}
		if g != nil {
			guests.AddRow(g.row()...)
			continue
		}
		row := []benchreport.Cell{benchreport.Textf("%d MiB", size)}
		for range guestColumns[1:] {
			row = append(row, benchreport.Missing(reason))
		}
		guests.AddRow(row...)
	}
	s.Add(guests)

	t := &benchreport.Table{Title: TableInternet, How: internetHow(env, cells),
		Columns: []string{"Profile", "Guest RAM", "Method", "Total time", "Time vs QEMU plain", "Downtime",
			"Downtime vs QEMU plain", "Bytes on the link", "Bytes vs QEMU plain", "Bytes / guest RAM", "Guest after migration"}}
	for _, c := range cells {
		for _, m := range []string{methodDWCP, methodDWCPReturn, methodPlain} {
			row := []benchreport.Cell{benchreport.Text(profileName(c)), benchreport.Textf("%d MiB", c.MemMiB), benchreport.Text(label(m))}
			row = append(row, c.metricCells(m)...)
			ram := float64(c.MemMiB)
			row = append(row, c.valueOr(m, ratioCell(c.samples(m, func(r livelab.Row) float64 { return wireMiB(r) / ram }))), c.checkedCell(m))
			t.AddRow(row...)
		}
	}
	s.Add(t)

	var cats []string
	var dwcpT, returnT, plainT, dwcpB, returnB, plainB []float64
	for _, c := range cells {
		cats = append(cats, fmt.Sprintf("%s %d MiB", profileName(c), c.MemMiB))
		dwcpT = append(dwcpT, median(c.samples(methodDWCP, seconds)))
		returnT = append(returnT, median(c.samples(methodDWCPReturn, seconds)))
		plainT = append(plainT, median(c.samples(methodPlain, seconds)))
		dwcpB = append(dwcpB, median(c.samples(methodDWCP, wireMiB)))
		returnB = append(returnB, median(c.samples(methodDWCPReturn, wireMiB)))
		plainB = append(plainB, median(c.samples(methodPlain, wireMiB)))
	}
	runs := runsPerCell(env)
	addFigure(s, cells, &benchreport.Figure{Title: "Live migration time by link profile and guest size", File: FigInternetTime,
		How: fmt.Sprintf("Median total migration time of %d run(s) per bar (table %q has min–max); "+
			"DWCP (mode %s) and QEMU plain migrated the same booted guest in the same lab, one after the other.", runs, TableInternet, dwcpMode),
		Chart: &benchreport.BarChart{Title: "Live migration time (lower is better)", YLabel: "seconds (median)", Categories: cats,
			Series: []benchreport.Series{{Name: label(methodDWCP), Values: dwcpT}, {Name: label(methodDWCPReturn), Values: returnT}, {Name: label(methodPlain), Values: plainT}}}})
	addFigure(s, cells, &benchreport.Figure{Title: "Bytes on the link by link profile and guest size", File: FigInternetBytes,
		How: fmt.Sprintf("Median IP bytes from source to destination counted by the WAN lab, %d run(s) per bar, same migrations as %q.", runs, TableInternet),
		Chart: &benchreport.BarChart{Title: "Bytes on the link per migration (lower is better)", YLabel: "MiB (median)", Categories: cats,
			Series: []benchreport.Series{{Name: label(methodDWCP), Values: dwcpB}, {Name: label(methodDWCPReturn), Values: returnB}, {Name: label(methodPlain), Values: plainB}}}})
	return errors.Join(errs...)
}

func runNative(ctx context.Context, env *benchreport.Env, s *benchreport.Section) error {
	order := []string{methodPlain}
	for _, n := range livelab.Native {
		if n != methodPlain {
			order = append(order, n)
		}
	}
	order = append(order, methodDWCP, methodDWCPReturn)
	size := nativeSize(env)

	var cells []*cell
	var errs []error
	t := &benchreport.Table{Title: TableNative,
		Columns: []string{"Profile", "Method", "Settings (read back from the source QEMU)", "Total time", "Time vs QEMU plain",
			"Downtime", "Downtime vs QEMU plain", "Bytes on the link", "Bytes vs QEMU plain", "Guest after migration"}}
	for _, p := range nativeProfiles {
		if !nativeMeasured(env, p) {
			for _, m := range order {
				row := []benchreport.Cell{benchreport.Text(p), benchreport.Text(label(m))}
				for range t.Columns[2:] {
					row = append(row, benchreport.Missing("full run only"))
				}
				t.AddRow(row...)
			}
			continue
		}
		if ctx.Err() != nil {
			break
		}
		c, err := measure(ctx, env, p, size)
		if err != nil {
			errs = append(errs, err)
		}
		cells = append(cells, c)
		for _, m := range order {
			settings := benchreport.Missing("not measured")
			if len(c.Settings[m]) > 0 {
				text := renderSettings(c.Settings[m])
				if m == methodDWCP || m == methodDWCPReturn {
					text = "dwcp migrate --mode " + dwcpMode + "; source QEMU: " + text
				}
				settings = benchreport.Text(text)
			}
			row := []benchreport.Cell{benchreport.Text(profileName(c)), benchreport.Text(label(m)), c.valueOr(m, settings)}
			row = append(row, c.metricCells(m)...)
			t.AddRow(append(row, c.checkedCell(m))...)
		}
	}
	t.How = nativeHow(env, cells, size)
	s.Add(t)
	if len(cells) > 0 && cells[0].Guest != nil {
		s.Note("The guest of these runs: %s.", cells[0].Guest.summary())
	}

	var cats []string
	series := make([]benchreport.Series, len(order))
	for i, m := range order {
		series[i].Name = label(m)
	}
	for _, c := range cells {
		for _, q := range []struct {
			name string
			f    func(livelab.Row) float64
		}{{"time", seconds}, {"bytes on the link", wireMiB}} {
			cats = append(cats, profileName(c)+": "+q.name)
			for i, m := range order {
				series[i].Values = append(series[i].Values, median(c.paired(m, methodPlain, q.f)))
			}
		}
	}
	addFigure(s, cells, &benchreport.Figure{Title: "DWCP beside QEMU's own migration methods", File: FigNative,
		How: fmt.Sprintf("Each bar: median over %d run(s) of the method's total time or bytes on the link divided by "+
			"QEMU plain's in the same run (QEMU plain = 1; below 1 is better); same migrations as %q, which also "+
			"has the downtimes (left out here: QEMU plain's are a few ms on a fast link, so their ratios dwarf the rest).",
			runsPerCell(env), TableNative),
		Chart: &benchreport.BarChart{Title: "Against QEMU plain (lower is better)", YLabel: "ratio vs QEMU plain (median)",
			Categories: cats, Series: series}})
	return errors.Join(errs...)
}

// metricCells are total time, downtime and bytes on the link of method m,
// each followed by its ratio against QEMU plain of the same runs.
func (c *cell) metricCells(m string) []benchreport.Cell {
	ratio := func(f func(livelab.Row) float64) benchreport.Cell {
		if m == methodPlain {
			return benchreport.Text("baseline")
		}
		if len(c.samples(m, f)) == 0 {
			return benchreport.Missing(c.why(m))
		}
		r := c.paired(m, methodPlain, f)
		if len(r) == 0 {
			return benchreport.Missing("no run with both " + label(m) + " and QEMU plain: " + c.why(methodPlain))
		}
		return ratioCell(r)
	}
	return []benchreport.Cell{
		c.valueOr(m, benchreport.Summarize(c.samples(m, seconds)).Cell(1, "s")),
		ratio(seconds),
		c.valueOr(m, benchreport.Summarize(c.samples(m, downtimeMs)).Cell(0, "ms")),
		ratio(downtimeMs),
		c.valueOr(m, benchreport.Summarize(c.samples(m, wireMiB)).Cell(1, "MiB")),
		ratio(wireMiB),
	}
}

// valueOr is v when method m has a measurement, else why it has none.
func (c *cell) valueOr(m string, v benchreport.Cell) benchreport.Cell {
	if len(c.samples(m, seconds)) == 0 {
		return benchreport.Missing(c.why(m))
	}
	return v
}

// why says why method m has no measurement in this cell.
func (c *cell) why(m string) string {
	switch {
	case c.Missing != "":
		return c.Missing
	case c.Failed[m] != "":
		return "failed: " + c.Failed[m]
	case m == methodDWCPReturn && len(c.samples(methodDWCP, seconds)) > 0:
		return "no DWCP migration of this guest found its pages at the destination (a first trip only)"
	default:
		return "not measured: an earlier migration of this guest failed"
	}
}

// checkedCell says how the migrated guests were checked: livelab fails a
// migration whose guest restarted or whose fixed region changed, so every
// row here passed both checks.
func (c *cell) checkedCell(m string) benchreport.Cell {
	var n int
	var last string
	for _, r := range c.Runs {
		if row, ok := r[m]; ok {
			n++
			last = row.Heartbeat
		}
	}
	switch {
	case n == 0:
		return benchreport.Missing(c.why(m))
	case n == 1:
		return benchreport.Text("heartbeat " + last)
	default:
		return benchreport.Textf("%d/%d: heartbeat continued, checksum unchanged (last: %s)", n, len(c.Runs), last)
	}
}

// ratioCell is "0.45x" for one run, "0.45x (0.40–0.50, n=3)" for more.
func ratioCell(samples []float64) benchreport.Cell {
	s := benchreport.Summarize(samples)
	switch s.N {
	case 0:
		return benchreport.Missing("no samples")
	case 1:
		return benchreport.Textf("%.2fx", s.Median)
	default:
		return benchreport.Textf("%.2fx (%.2f–%.2f, n=%d)", s.Median, s.Min, s.Max, s.N)
	}
}

func median(samples []float64) float64 {
	if len(samples) == 0 {
		return math.NaN()
	}
	return benchreport.Summarize(samples).Median
}

func profileName(c *cell) string {
	if c.Profile.Name == "" {
		return "?"
	}
	return c.Profile.Name
}

// addFigure adds f, or a note saying why it was not drawn when no bar has
// a value.
func addFigure(s *benchreport.Section, cells []*cell, f *benchreport.Figure) {
	if c, ok := f.Chart.(*benchreport.BarChart); ok {
		for _, ser := range c.Series {
			for _, v := range ser.Values {
				if !math.IsNaN(v) {
					s.Add(f)
					return
				}
			}
		}
	}
	reason := "no migration was measured"
	for _, c := range cells {
		if c.Missing != "" {
			reason = c.Missing
			break
		}
	}
	s.Note("Chart %s: not drawn: %s.", f.File, reason)
}

// profilesHow lists the lab profiles of cells with their parameters.
func profilesHow(cells []*cell) string {
	var out []string
	seen := map[string]bool{}
	for _, c := range cells {
		if c.Profile.Name == "" || seen[c.Profile.Name] {
			continue
		}
		seen[c.Profile.Name] = true
		out = append(out, fmt.Sprintf("%s (%s)", c.Profile.Name, c.Profile.Summary()))
	}
	if len(out) == 0 {
		return "none could run"
	}
	return strings.Join(out, "; ")
}

const methodHow = "Each migration is checked: the destination runs, the guest's heartbeat continues past the " +
	"source's last one (no restart) and the MD5 of its never-written region is unchanged. Total time: wall time " +
	"from the migrate command to the destination running (for DWCP the whole `dwcp migrate` process: plugin " +
	"start, TLS session, stream, verification, resume). Downtime: DWCP's own figure (from the source QEMU's " +
	"stop event to the destination's report that its VM runs); for QEMU's methods both QEMUs are polled " +
	"(source leaves running -> destination running). Bytes on the link: IP packets source -> destination " +
	"counted by the lab (payload, TLS, TCP/IP headers, retransmissions). Ratios are taken per run against " +
	"QEMU plain of the same run, then summarised as median (min–max, n). DWCP keeps a page history per peer " +
	"(docs/pagestore.md): a DWCP migration whose destination held pages of this guest from an earlier trip " +
	"(it sent at least one page as a reference to them) is a row of its own, \"with page history\"; " +
	"\"no page history\" rows are migrations that found none (the guest's first trip to that host)."

func internetHow(env *benchreport.Env, cells []*cell) string {
	var plain [][]setting
	for _, c := range cells {
		plain = append(plain, c.Settings[methodPlain]...)
	}
	plainSet := "not read back (no QEMU plain run completed)"
	if len(plain) > 0 {
		plainSet = renderSettings(plain)
	}
	return fmt.Sprintf("Per profile and guest size, one lab (two hosts in network namespaces joined by the lab's "+
		"user-space shaper; `dwcp serve` on both, real dwcp binary and plugins from %s) and one test guest "+
		"(table %q) booted once and migrated back and forth between the hosts: %d run(s) per method, "+
		"methods in rotating order. DWCP: `dwcp migrate --mode %s`. QEMU plain: QEMU's own migration over "+
		"TCP across the same link; settings read back from the source QEMU: %s. Profiles: %s. %s",
		env.PluginDir, TableGuest, runsPerCell(env), dwcpMode, plainSet, profilesHow(cells), methodHow)
}

func nativeHow(env *benchreport.Env, cells []*cell, size int) string {
	quick := ""
	if env.Quick {
		quick = " Quick mode measures only the " + nativeProfiles[0] + " profile."
	}
	return fmt.Sprintf("Per profile, one lab and one %d MiB test guest (described below) booted once and migrated "+
		"back and forth between the lab's two hosts with each method: %d run(s) per method, methods in rotating "+
		"order, the same runs as section 2 where profile and size match. QEMU's methods: QEMU's own migration "+
		"over TCP across the lab link; DWCP: `dwcp migrate --mode %s` through `dwcp serve` on the other host "+
		"(plugins from %s). Settings are what the source QEMU reported (query-migrate-capabilities, "+
		"query-migrate-parameters) after the method ran. Profiles: %s.%s %s",
		size, runsPerCell(env), dwcpMode, env.PluginDir, profilesHow(cells), quick, methodHow)
}
