package codecbench

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/dwcp/dwcp/host/internal/benchreport"
	"github.com/dwcp/dwcp/plugins/lz4/lz4codec"
	"github.com/dwcp/dwcp/plugins/zstd/zstdcodec"
	"github.com/dwcp/dwcp/sdk/codec"
	"github.com/dwcp/dwcp/sdk/conformance"
)

// Table title and chart files of section 4's command-line part.
const (
	TitleCLI = "DWCP codec plugins beside the zstd and lz4 command-line tools"

	FigCLIRatio = "codecbench-cli-ratio.svg"
	FigCLISpeed = "codecbench-cli-speed.svg"
)

var (
	cliTables  = []string{TitleCLI}
	cliFigures = []string{FigCLIRatio, FigCLISpeed}
)

// CLITools compares DWCP's codec plugins with the zstd and lz4 tools on
// the same bytes in the same run.
var CLITools = benchreport.Part{
	Name:    "codecbench: command-line tools",
	Tables:  cliTables,
	Figures: cliFigures,
	Run:     runCLI,
}

// cliSetting is a tool invocation and the plugin level it is compared with.
type cliSetting struct {
	tool  string
	args  []string
	algo  string
	level int
	// prefix: the setting is too slow for the whole input; it runs on a
	// prefix (both the tool and the plugin).
	prefix bool
}

func (c cliSetting) label() string { return c.tool + " " + strings.Join(c.args, " ") }

var cliSettings = []cliSetting{
	{tool: "zstd", args: []string{"-1"}, algo: zstdcodec.Algorithm, level: zstdcodec.LevelFastest},
	{tool: "zstd", args: []string{"-3"}, algo: zstdcodec.Algorithm, level: zstdcodec.LevelDefault},
	{tool: "zstd", args: []string{"-19"}, algo: zstdcodec.Algorithm, level: zstdcodec.LevelBest, prefix: true},
	{tool: "lz4", args: []string{"-1"}, algo: lz4codec.Algorithm, level: lz4codec.LevelFast},
	{tool: "lz4", args: []string{"-9"}, algo: lz4codec.Algorithm, level: lz4codec.LevelHC9},
}

// cliCommand compresses stdin to stdout with one thread.
func cliCommand(ctx context.Context, path string, c cliSetting) *exec.Cmd {
	args := append([]string{"-c", "-q"}, c.args...)
	if c.tool == "zstd" {
		args = append(args, "-T1")
	}
	return exec.CommandContext(ctx, path, args...)
}

// runTool compresses data with the tool and returns the output size and the
// wall time, process start and exit included.
func runTool(ctx context.Context, path string, c cliSetting, data []byte) (int, time.Duration, error) {
	cmd := cliCommand(ctx, path, c)
	cmd.Stdin = bytes.NewReader(data)
	var out countWriter
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	if err != nil {
		return 0, d, fmt.Errorf("%s: %w: %s", c.label(), err, strings.TrimSpace(stderr.String()))
	}
	return int(out), d, nil
}

type countWriter int64

func (w *countWriter) Write(p []byte) (int, error) {
	*w += countWriter(len(p))
	return len(p), nil
}

// pluginBlocks compresses data in blocks of block bytes, one call after
// another from one goroutine (like the tools' one thread), and returns the
// total output and the time; every block is decoded and checked after the
// clock stopped.
func pluginBlocks(c codec.Codec, level int, data []byte, block int) (int, time.Duration, error) {
	encs := make([][]byte, 0, len(data)/block+1)
	start := time.Now()
	for off := 0; off < len(data); off += block {
		e, err := c.Encode(nil, data[off:min(off+block, len(data))], level)
		if err != nil {
			return 0, 0, fmt.Errorf("encode: %w", err)
		}
		encs = append(encs, e)
	}
	d := time.Since(start)
	total := 0
	var dec []byte
	for i, e := range encs {
		src := data[i*block : min((i+1)*block, len(data))]
		var err error
		if dec, err = c.Decode(dec[:0], e, len(src)); err != nil {
			return 0, 0, fmt.Errorf("decode: %w", err)
		}
		if !bytes.Equal(dec, src) {
			return 0, 0, fmt.Errorf("block %d decoded to different bytes", i)
		}
		total += len(e)
	}
	return total, d, nil
}

// spread takes n bytes of data as slices of block bytes evenly spaced over
// all of it, so that the sample has the whole stream's mix of pages rather
// than whatever its first megabytes hold.
func spread(data []byte, n, block int) []byte {
	if n >= len(data) {
		return data
	}
	k := n / block
	out := make([]byte, 0, k*block)
	for i := range k {
		off := i * (len(data) - block) / max(k-1, 1)
		out = append(out, data[off:off+block]...)
	}
	return out
}

type cliInput struct {
	name string
	data []byte
	err  error
}

func runCLI(ctx context.Context, env *benchreport.Env, s *benchreport.Section) error {
	set, err := codecs(ctx, env)
	if err != nil {
		return err
	}
	size := benchreport.Pick(env, 8<<20, 64<<20)
	prefix := benchreport.Pick(env, 2<<20, 16<<20)
	runs := benchreport.Pick(env, 1, 3)
	const block = 1 << 20

	var inputs []cliInput
	if real, err := stream(ctx, env, "single.bin"); err != nil {
		inputs = append(inputs, cliInput{name: "real VM stream", err: fmt.Errorf("%v: %s", errNoStream, why(err))})
	} else {
		inputs = append(inputs, cliInput{name: "real VM stream", data: spread(real, size, block)})
	}
	for _, n := range patternNames[1:] {
		p, ok := conformance.PatternByName(n)
		if !ok {
			return fmt.Errorf("pattern %q unknown to sdk/conformance", n)
		}
		inputs = append(inputs, cliInput{name: n, data: p.Bytes(size, 1)})
	}

	tools := map[string]string{}
	var startCost []string
	for _, tool := range []string{"zstd", "lz4"} {
		path, err := exec.LookPath(tool)
		if err != nil {
			continue
		}
		tools[tool] = path
		// What a run costs with nothing to compress: process start, exit
		// and pipes, included in every wall time below.
		var empty []float64
		for range 5 {
			_, d, err := runTool(ctx, path, cliSetting{tool: tool, args: []string{"-1"}}, nil)
			if err != nil {
				return err
			}
			empty = append(empty, d.Seconds()*1e3)
		}
		startCost = append(startCost, fmt.Sprintf("%s %.1f ms", tool, benchreport.Summarize(empty).Median))
	}

	t := &benchreport.Table{
		Title: TitleCLI,
		Columns: []string{"input", "tool", "DWCP plugin", "bytes", "tool ratio", "tool MB/s", "plugin ratio", "plugin MB/s",
			"plugin ÷ tool speed", "plugin ÷ tool output bytes"},
	}
	ratioChart := &benchreport.BarChart{YLabel: "input bytes ÷ output bytes", Series: []benchreport.Series{{Name: "command-line tool"}, {Name: "DWCP plugin"}}}
	speedChart := &benchreport.BarChart{YLabel: "MB/s (one thread, median)", Series: []benchreport.Series{{Name: "command-line tool"}, {Name: "DWCP plugin"}}}
	charted := ""
	for _, in := range inputs {
		for _, c := range cliSettings {
			plugin := fmt.Sprintf("%s:%d", c.algo, c.level)
			row := []benchreport.Cell{benchreport.Text(in.name), benchreport.Text(c.label()), benchreport.Text(plugin)}
			if in.err != nil {
				row = append(row, benchreport.Missing(why(in.err)))
				for range 6 {
					row = append(row, benchreport.Missing("no input"))
				}
				t.AddRow(row...)
				continue
			}
			data := in.data
			if c.prefix {
				data = data[:min(prefix, len(data))]
			}
			row = append(row, benchreport.Textf("%d", len(data)))
			env.Logf("    %s and %s on %s (%s) ...", c.label(), plugin, in.name, benchreport.FormatBytes(float64(len(data))))

			var toolCells [2]benchreport.Cell
			toolMBps, toolOut := 0.0, 0
			if path, ok := tools[c.tool]; ok {
				var speeds []float64
				for range runs {
					n, d, err := runTool(ctx, path, c, data)
					if err != nil {
						s.Add(t)
						return err
					}
					toolOut = n
					speeds = append(speeds, benchreport.MBps(int64(len(data)), d))
				}
				sm := benchreport.Summarize(speeds)
				toolMBps = sm.Median
				toolCells = [2]benchreport.Cell{benchreport.Num(float64(len(data))/float64(toolOut), 2), sm.Cell(1, "")}
			} else {
				toolCells = [2]benchreport.Cell{benchreport.Missing(c.tool + " is not installed"), benchreport.Missing(c.tool + " is not installed")}
			}
			row = append(row, toolCells[:]...)

			cd, ok := set.byAlgo[c.algo]
			if !ok || !cd.Capabilities().Levels.Contains(c.level) {
				reason := "no " + plugin + " plugin in " + env.PluginDir
				row = append(row, benchreport.Missing(reason), benchreport.Missing(reason), benchreport.Missing(reason), benchreport.Missing(reason))
				t.AddRow(row...)
				continue
			}
			var speeds []float64
			plugOut := 0
			for range runs {
				n, d, err := pluginBlocks(cd, c.level, data, block)
				if err != nil {
					s.Add(t)
					return fmt.Errorf("plugin %s on %s: %w", plugin, in.name, err)
				}
				plugOut = n
				speeds = append(speeds, benchreport.MBps(int64(len(data)), d))
			}
			sm := benchreport.Summarize(speeds)
			row = append(row, benchreport.Num(float64(len(data))/float64(plugOut), 2), sm.Cell(1, ""))
			if toolOut > 0 {
				row = append(row, ratio(sm.Median, toolMBps), ratio(float64(plugOut), float64(toolOut)))
			} else {
				row = append(row, benchreport.Missing(c.tool+" is not installed"), benchreport.Missing(c.tool+" is not installed"))
			}
			t.AddRow(row...)
			if charted == "" || charted == in.name {
				charted = in.name
				tr, ts := 0.0, 0.0
				if toolOut > 0 {
					tr, ts = float64(len(data))/float64(toolOut), toolMBps
				}
				ratioChart.Categories = append(ratioChart.Categories, c.label())
				ratioChart.Series[0].Values = append(ratioChart.Series[0].Values, tr)
				ratioChart.Series[1].Values = append(ratioChart.Series[1].Values, float64(len(data))/float64(plugOut))
				speedChart.Categories = append(speedChart.Categories, c.label())
				speedChart.Series[0].Values = append(speedChart.Series[0].Values, ts)
				speedChart.Series[1].Values = append(speedChart.Series[1].Values, sm.Median)
			}
		}
	}
	start := "neither tool is installed"
	if len(startCost) > 0 {
		start = "measured here with empty input (median of 5): " + strings.Join(startCost, ", ")
	}
	t.How = fmt.Sprintf("Inputs: %s of the real QEMU stream of the test guest (single.bin) as 1 MiB slices evenly spaced over the whole stream, "+
		"and %s of each sdk/conformance pattern (seed 1); zstd -19 and its counterpart run on the first %s of each input only (zstd -19 manages a few MB/s). Tools: `zstd -c -q -T1 -N` and "+
		"`lz4 -c -q -N`, input on stdin, output counted from stdout; the wall time includes starting the process and the pipes (%s). "+
		"DWCP: the codec plugin processes at the nearest level (zstd plugin levels are klauspost/compress speeds: 1 ≈ -1, 2 ≈ -3, 4 ≈ -11, "+
		"its heaviest, against -19; lz4-block 0 = fast, 9 = HC level 9), called on %d KiB blocks one after another from one goroutine as the "+
		"pipeline cuts batches; every block is decoded and compared afterwards. Output bytes: the tool's whole frame vs the sum of the plugin's "+
		"blocks (blocks lose the cross-block matches a whole-file frame keeps). %d run(s) per cell; MB/s cells are median (min–max, n); ratios "+
		"are of the medians.",
		benchreport.FormatBytes(float64(size)), benchreport.FormatBytes(float64(size)), benchreport.FormatBytes(float64(prefix)), start, block>>10, runs)
	s.Add(t)
	if charted == "" {
		s.Note("Chart %s: not drawn: no input could be measured.", FigCLIRatio)
		s.Note("Chart %s: not drawn: no input could be measured.", FigCLISpeed)
		return nil
	}
	ratioChart.Title = "Compression ratio on " + charted + ": tool vs DWCP plugin"
	speedChart.Title = "Compression speed on " + charted + ": tool vs DWCP plugin"
	s.Add(&benchreport.Figure{Title: ratioChart.Title, File: FigCLIRatio, Chart: ratioChart, How: "Ratios from the table above (" + charted + " rows); a missing tool is drawn as 0."})
	s.Add(&benchreport.Figure{Title: speedChart.Title, File: FigCLISpeed, Chart: speedChart, How: "Median MB/s from the table above (" + charted + " rows), tool wall time including process start."})
	return nil
}
