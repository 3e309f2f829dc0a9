package benchreport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/dwcp/dwcp/host/internal/testguest"
	"github.com/dwcp/dwcp/host/pluginhost"
)

// Options configure a run.
type Options struct {
	// Quick trades accuracy for time: smaller inputs, fewer runs, fewer
	// lab profiles. It must finish in a few minutes on a 2-core machine.
	Quick bool
	// Out is the folder for report.md and the charts; created if missing.
	Out string
	// PluginDir is a pinned plugin directory (make build's bin/plugins).
	PluginDir string
	// Dwcp is the dwcp binary the lab sections run on each lab host.
	Dwcp string
	// Progress receives one line per step (optional).
	Progress io.Writer
	// Only, when set, runs just the sections with these keys.
	Only []string
}

// SectionSpec is a part of the report: what it promises to contain and
// the code that measures it.
type SectionSpec struct {
	Key   string // for --only and logs
	Title string
	Intro string
	// Tables and Figures list the table titles and chart file names the
	// section always produces. If it fails before producing one, the
	// runner adds it with the failure as the stated reason, so the report
	// always has the same shape; Check verifies them in a written report.
	Tables  []string
	Figures []string
	Run     func(ctx context.Context, env *Env, s *Section) error
}

// ReportFile is the Markdown file's name inside Options.Out.
const ReportFile = "report.md"

// Env is what a section gets: the options and shared, lazily created
// resources.
type Env struct {
	Options
	mu       sync.Mutex
	plugins  *pluginhost.Host
	plugErr  error
	streams  string
	strErr   error
	progress sync.Mutex
	memo     map[string]*memoEntry
}

type memoEntry struct {
	once sync.Once
	v    any
	err  error
}

// Logf prints a progress line.
func (e *Env) Logf(format string, args ...any) {
	if e.Progress == nil {
		return
	}
	e.progress.Lock()
	defer e.progress.Unlock()
	fmt.Fprintf(e.Progress, "[%s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// Pick returns quick in quick mode and full otherwise.
func Pick[T any](e *Env, quick, full T) T {
	if e.Quick {
		return quick
	}
	return full
}

// Plugins opens the pinned plugin directory once per run; sections share
// the plugin processes.
func (e *Env) Plugins(ctx context.Context) (*pluginhost.Host, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.plugins == nil && e.plugErr == nil {
		e.plugins, e.plugErr = pluginhost.Open(ctx, pluginhost.Options{Dir: e.PluginDir})
		if e.plugErr != nil {
			e.plugErr = fmt.Errorf("open plugins in %s: %w", e.PluginDir, e.plugErr)
		}
	}
	return e.plugins, e.plugErr
}

// StreamsDir returns the folder of real QEMU migration streams of the test
// guest (single.bin, later.bin, live.bin), capturing them on first use.
func (e *Env) StreamsDir(ctx context.Context) (string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.streams == "" && e.strErr == nil {
		e.Logf("capturing (or reusing) real QEMU migration streams of the test guest ...")
		e.streams, e.strErr = testguest.Streams(ctx)
	}
	return e.streams, e.strErr
}

// RealStream reads one of the captured streams.
func (e *Env) RealStream(ctx context.Context, name string) ([]byte, error) {
	dir, err := e.StreamsDir(ctx)
	if err != nil {
		return nil, err
	}
	return os.ReadFile(filepath.Join(dir, name))
}

func (e *Env) close() {
	if e.plugins != nil {
		e.plugins.Close()
	}
}

// Run measures the sections and writes the report into opts.Out. The
// report is written even when a section fails; the error then names the
// failed sections.
func Run(ctx context.Context, opts Options, specs []SectionSpec) (*Report, error) {
	if opts.Out == "" {
		return nil, errors.New("report: no output folder")
	}
	if err := os.MkdirAll(opts.Out, 0o755); err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	env := &Env{Options: opts}
	defer env.close()
	r := &Report{Title: "DWCP performance validation report", Quick: opts.Quick, Started: time.Now()}
	r.Machine = DescribeMachine(ctx)
	var failed []string
	for _, spec := range specs {
		if len(opts.Only) > 0 && !slices.Contains(opts.Only, spec.Key) {
			continue
		}
		s := &Section{Title: spec.Title, Intro: spec.Intro}
		env.Logf("section %q ...", spec.Title)
		start := time.Now()
		s.Err = runSection(ctx, env, spec, s)
		if s.Err != nil {
			failed = append(failed, spec.Key)
			env.Logf("section %q failed after %s: %v", spec.Title, time.Since(start).Round(time.Second), s.Err)
		} else {
			env.Logf("section %q done in %s", spec.Title, time.Since(start).Round(time.Second))
		}
		complete(s, spec)
		r.Sections = append(r.Sections, s)
		if ctx.Err() != nil {
			break
		}
	}
	r.Duration = time.Since(r.Started)
	if err := Write(opts.Out, r); err != nil {
		return r, err
	}
	if ctx.Err() != nil {
		return r, fmt.Errorf("report interrupted: %w", ctx.Err())
	}
	if len(failed) > 0 {
		return r, fmt.Errorf("report written to %s, but sections failed: %v", opts.Out, failed)
	}
	return r, nil
}

// runSection runs one section, turning a panic in measurement code into
// the section's error so that the rest of the report is still written.
func runSection(ctx context.Context, env *Env, spec SectionSpec, s *Section) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	return spec.Run(ctx, env, s)
}

// complete adds the tables and figures a section promised but did not
// produce, each saying why.
func complete(s *Section, spec SectionSpec) {
	reason := "not measured"
	if s.Err != nil {
		reason = "not measured: the section failed: " + oneLine(s.Err.Error())
	}
	have := map[string]bool{}
	for _, it := range s.Items {
		switch v := it.(type) {
		case *Table:
			have["t:"+v.Title] = true
		case *Figure:
			have["f:"+v.File] = true
		}
	}
	for _, t := range spec.Tables {
		if !have["t:"+t] {
			s.Add(&Table{Title: t, Columns: []string{"result"}, Rows: [][]Cell{{Missing(reason)}}})
		}
	}
	for _, f := range spec.Figures {
		if !have["f:"+f] {
			s.Note("Chart %s: %s.", f, reason)
		}
	}
}

// Write writes report.md and every chart into dir. A chart that cannot be
// drawn is replaced in the report by a note that says why.
func Write(dir string, r *Report) error {
	for _, s := range r.Sections {
		for i, it := range s.Items {
			f, ok := it.(*Figure)
			if !ok {
				continue
			}
			if err := f.Chart.Save(filepath.Join(dir, f.File)); err != nil {
				s.Items[i] = Paragraph(fmt.Sprintf("Chart %s could not be drawn: %v.", f.File, err))
			}
		}
	}
	f, err := os.Create(filepath.Join(dir, ReportFile))
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	if err := WriteMarkdown(f, r); err != nil {
		f.Close()
		return fmt.Errorf("report: %w", err)
	}
	return f.Close()
}
