package livebench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/dwcp/dwcp/host/internal/benchreport"
	"github.com/dwcp/dwcp/host/internal/testguest"
)

// guestInfo is what the booted guest itself reported: the workload knobs
// in effect and its memory counters when the workload was up (the
// "DWCP config" and "DWCP mem" lines of testdata/guest/init.sh), and what
// its QEMU reported about CPUs and acceleration. The report describes the
// guest from these, never from the knobs this package asked for.
type guestInfo struct {
	MemMiB int
	Kernel string
	VCPUs  int
	KVM    bool
	Config map[string]string
	Mem    map[string]string
}

var (
	configRE = regexp.MustCompile(`DWCP config (.*)$`)
	memRE    = regexp.MustCompile(`DWCP mem (.*)$`)
)

func readGuest(ctx context.Context, vm *testguest.VM, g testguest.Guest, memMiB int) (*guestInfo, error) {
	gi := &guestInfo{MemMiB: memMiB, Kernel: g.KernelVersion}
	m, err := vm.WaitSerial(ctx, configRE)
	if err != nil {
		return nil, fmt.Errorf("guest config line: %w", err)
	}
	if gi.Config, err = parseKV(m[1]); err != nil {
		return nil, fmt.Errorf("guest config line: %w", err)
	}
	if m, err = vm.WaitSerial(ctx, memRE); err != nil {
		return nil, fmt.Errorf("guest mem line: %w", err)
	}
	if gi.Mem, err = parseKV(m[1]); err != nil {
		return nil, fmt.Errorf("guest mem line: %w", err)
	}
	raw, err := vm.QMP(ctx, "query-cpus-fast", nil)
	if err != nil {
		return nil, err
	}
	var cpus []json.RawMessage
	if err := json.Unmarshal(raw, &cpus); err != nil {
		return nil, fmt.Errorf("query-cpus-fast reply: %w", err)
	}
	gi.VCPUs = len(cpus)
	if raw, err = vm.QMP(ctx, "query-kvm", nil); err != nil {
		return nil, err
	}
	var kvm struct {
		Enabled bool `json:"enabled"`
	}
	if err := json.Unmarshal(raw, &kvm); err != nil {
		return nil, fmt.Errorf("query-kvm reply: %w", err)
	}
	gi.KVM = kvm.Enabled
	return gi, nil
}

// parseKV reads "k=v k=v ..." as the guest prints it.
func parseKV(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, f := range strings.Fields(s) {
		k, v, ok := strings.Cut(f, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("parse %.60q: field %.40q is not key=value", s, f)
		}
		out[k] = v
	}
	return out, nil
}

// guestColumns and guestRow describe a guest in a table row.
var guestColumns = []string{"Guest RAM", "CPU", "Files in tmpfs (page cache)", "Bulk region (rewritten)",
	"Sparse text region", "Heap (awk, text)", "Checksummed region (never written)", "At ready"}

func (g *guestInfo) row() []benchreport.Cell {
	cell := func(format string, keys ...string) benchreport.Cell {
		args := make([]any, len(keys))
		for i, k := range keys {
			v, ok := g.Config[k]
			if !ok {
				return benchreport.Missing("the guest did not report " + k)
			}
			args[i] = v
		}
		return benchreport.Textf(format, args...)
	}
	ram := benchreport.Textf("%d MiB", g.MemMiB)
	if kb, err := strconv.ParseFloat(g.Mem["MemTotal_kb"], 64); err == nil {
		ram = benchreport.Textf("%d MiB (kernel sees %s)", g.MemMiB, benchreport.FormatBytes(kb*1024))
	}
	accel := "TCG"
	if g.KVM {
		accel = "KVM"
	}
	files := benchreport.Missing("the guest did not report payload_kb")
	if kb, err := strconv.ParseFloat(g.Config["payload_kb"], 64); err == nil {
		files = benchreport.Textf("%s of real files from the payload disk", benchreport.FormatBytes(kb*1024))
	}
	var ready []string
	for _, k := range []string{"MemFree", "Shmem", "AnonPages", "Cached"} {
		if kb, err := strconv.ParseFloat(g.Mem[k+"_kb"], 64); err == nil {
			ready = append(ready, fmt.Sprintf("%s %s", k, benchreport.FormatBytes(kb*1024)))
		}
	}
	atReady := benchreport.Missing("the guest did not report its memory counters")
	if len(ready) > 0 {
		atReady = benchreport.Text(strings.Join(ready, ", "))
	}
	return []benchreport.Cell{
		ram,
		benchreport.Textf("%d vCPU, %s, Linux %s", g.VCPUs, accel, g.Kernel),
		files,
		cell("%s MiB, %s KiB/s rewritten (random and text chunks)", "dirty_mb", "dirty_kbps"),
		cell("%s MiB of text, %s 16-byte writes/s", "sparse_mb", "sparse_per_s"),
		cell("%s MiB", "heap_mb"),
		cell("%s MiB from %s", "sum_mb", "sum_src"),
		atReady,
	}
}

// summary is the guest in one sentence, for How texts.
func (g *guestInfo) summary() string {
	cells := g.row()
	var parts []string
	for i, c := range cells {
		if c.Missing == "" {
			parts = append(parts, guestColumns[i]+": "+c.Text)
		}
	}
	return strings.Join(parts, "; ")
}

// setting is one migration setting QEMU reported.
type setting struct {
	key  string
	text string
	num  float64
	// format renders num; nil when the setting is not a number.
	format func(float64) string
}

// readSettings is the migration settings QEMU reports on the source after
// a method ran: the capabilities that were on and the parameters that
// matter to the method. They are read back rather than restated so that
// the report shows what QEMU did, whoever set it (livelab for QEMU's own
// methods, the qemu plugin for DWCP).
func readSettings(ctx context.Context, vm *testguest.VM) []setting {
	var out []setting
	caps, err := vm.QMP(ctx, "query-migrate-capabilities", nil)
	if err != nil {
		return append(out, setting{key: "settings", text: "not read back: " + oneLine(err.Error())})
	}
	params, err := vm.QMP(ctx, "query-migrate-parameters", nil)
	if err != nil {
		return append(out, setting{key: "settings", text: "not read back: " + oneLine(err.Error())})
	}
	s, err := parseSettings(caps, params)
	if err != nil {
		return append(out, setting{key: "settings", text: "not read back: " + err.Error()})
	}
	return append(out, s...)
}

// parseSettings reads QEMU's query-migrate-capabilities and
// query-migrate-parameters replies.
func parseSettings(capsJSON, paramsJSON []byte) ([]setting, error) {
	var caps []struct {
		Capability string `json:"capability"`
		State      bool   `json:"state"`
	}
	if err := json.Unmarshal(capsJSON, &caps); err != nil {
		return nil, fmt.Errorf("query-migrate-capabilities reply: %w", err)
	}
	var params map[string]any
	dec := json.NewDecoder(bytes.NewReader(paramsJSON))
	dec.UseNumber()
	if err := dec.Decode(&params); err != nil {
		return nil, fmt.Errorf("query-migrate-parameters reply: %w", err)
	}
	var on []string
	for _, c := range caps {
		if c.State && c.Capability != "" {
			on = append(on, c.Capability)
		}
	}
	slices.Sort(on)
	out := []setting{{key: "capabilities:", text: "none"}}
	if len(on) > 0 {
		out[0].text = strings.Join(on, ", ")
	}
	add := func(key, param string, format func(float64) string) {
		n, ok := params[param].(json.Number)
		if !ok {
			return
		}
		if f, err := n.Float64(); err == nil {
			out = append(out, setting{key: key, text: format(f), num: f, format: format})
		}
	}
	whole := func(v float64) string { return strconv.FormatFloat(v, 'f', 0, 64) }
	if slices.Contains(on, "xbzrle") {
		add("xbzrle cache", "xbzrle-cache-size", benchreport.FormatBytes)
	}
	if slices.Contains(on, "multifd") {
		add("multifd channels", "multifd-channels", whole)
		if c, ok := params["multifd-compression"].(string); ok {
			out = append(out, setting{key: "multifd compression", text: c})
			add(c+" level", "multifd-"+c+"-level", whole)
		}
	}
	add("max-bandwidth", "max-bandwidth", func(v float64) string { return benchreport.FormatBytes(v) + "/s" })
	add("downtime-limit", "downtime-limit", func(v float64) string { return whole(v) + " ms" })
	return out, nil
}

// renderSettings merges the settings of several runs of one method: a
// setting that differs between runs shows its range (a number) or its
// values, and one missing from some runs says in how many it was seen.
func renderSettings(runs [][]setting) string {
	var keys []string
	vals := map[string][]setting{}
	for _, r := range runs {
		for _, s := range r {
			if _, ok := vals[s.key]; !ok {
				keys = append(keys, s.key)
			}
			vals[s.key] = append(vals[s.key], s)
		}
	}
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		v := vals[k]
		var texts []string
		numeric := true
		lo, hi := v[0].num, v[0].num
		for _, s := range v {
			if !slices.Contains(texts, s.text) {
				texts = append(texts, s.text)
			}
			numeric = numeric && s.format != nil
			lo, hi = min(lo, s.num), max(hi, s.num)
		}
		var p string
		switch {
		case len(texts) == 1:
			p = k + " " + texts[0]
		case numeric:
			p = k + " " + v[0].format(lo) + "–" + v[0].format(hi) + " (differs by run)"
		default:
			p = k + " " + strings.Join(texts, " or ")
		}
		if len(v) < len(runs) {
			p += fmt.Sprintf(" (in %d of %d runs)", len(v), len(runs))
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, "; ")
}
