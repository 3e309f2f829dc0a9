package codecbench

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/dwcp/dwcp/host/agent"
	"github.com/dwcp/dwcp/host/internal/benchreport"
	"github.com/dwcp/dwcp/host/modes"
	"github.com/dwcp/dwcp/host/pagestage"
	"github.com/dwcp/dwcp/host/pipeline"
	"github.com/dwcp/dwcp/host/pluginhost"
	"github.com/dwcp/dwcp/sdk/codec"
)

// codecSet is the codec plugins of the run, numbered as a DWCP source
// numbers them for a session (1..n by algorithm name, as host/agent does),
// with the processes behind them.
type codecSet struct {
	list    []pipeline.Codec
	byAlgo  map[string]codec.Codec
	plugins []*pluginhost.Plugin
}

// codecs opens the run's plugin directory (shared by every part) once.
func codecs(ctx context.Context, env *benchreport.Env) (*codecSet, error) {
	v, err := env.Memo("codecbench/codecs", func() (any, error) {
		h, err := env.Plugins(ctx)
		if err != nil {
			return nil, err
		}
		set := &codecSet{}
		set.list, set.byAlgo, set.plugins = agent.SessionCodecs(h, nil)
		if len(set.list) == 0 {
			return nil, fmt.Errorf("no codec plugin in %s", env.PluginDir)
		}
		return set, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*codecSet), nil
}

// pids returns the codec plugins' current process ids.
func (s *codecSet) pids() []int {
	var out []int
	for _, p := range s.plugins {
		if pid := p.Pid(); pid > 0 {
			out = append(out, pid)
		}
	}
	return out
}

// byChoice returns the session codec a choice names.
func (s *codecSet) byChoice(c pipeline.Choice) (pipeline.Codec, bool) {
	for _, cd := range s.list {
		if cd.ID == c.Codec {
			return cd, true
		}
	}
	return pipeline.Codec{}, false
}

// choiceName is "zstd:3", or "store" for codec 0.
func (s *codecSet) choiceName(c pipeline.Choice) string {
	cd, ok := s.byChoice(c)
	if !ok {
		return "store"
	}
	return fmt.Sprintf("%s:%d", cd.Algorithm, c.Level)
}

// plan is what host/modes' Plan picks for a mode when the path is not
// known yet: it plans for the mode's typical link.
type plan struct {
	Mode     modes.Mode
	Settings modes.Settings
	Codec    string // "s2:1"
}

func (s *codecSet) plan(m modes.Mode) (plan, error) {
	st, err := modes.Plan(m, modes.Path{}, s.list, modes.PlanConfig{})
	if err != nil {
		return plan{}, fmt.Errorf("plan %v: %w", m, err)
	}
	return plan{Mode: m, Settings: st, Codec: s.choiceName(st.Start)}, nil
}

// source is the pipeline configuration the plan asks for, as `dwcp send`
// builds it, with the choice held fixed at the plan's start (the adaptive
// controller is measured in section 3).
func (p plan) source(s *codecSet, kind pipeline.Kind) pipeline.SourceConfig {
	cfg := pipeline.SourceConfig{
		Codecs: s.list, Policy: pipeline.FixedPolicy(p.Settings.Start), Kind: kind,
		BatchBytes: p.Settings.BatchBytes, CheckpointBytes: p.Settings.CheckpointBytes,
		Mode: p.Mode.String(),
	}
	if p.Settings.PageStage {
		ps := pipeline.DefaultPageStage()
		ps.Options.Disabled = p.Settings.PageDisabled
		cfg.PageStage = ps
	}
	return cfg
}

// dest is the destination's configuration for the same session.
func (s *codecSet) dest() pipeline.DestConfig {
	return pipeline.DestConfig{Codecs: s.byAlgo, PageStage: pipeline.PageStageDecoder}
}

// describe says in words what the plan runs, for a table's How.
func (p plan) describe() string {
	pages := "off"
	if p.Settings.PageStage {
		on := pagestage.AllTechniques &^ p.Settings.PageDisabled
		pages = on.String()
	}
	return fmt.Sprintf("%s mode as host/modes.Plan picks it for an unmeasured path (its typical link): codec %s, page stage %s, "+
		"batches of %d KiB, checkpoints every %d MiB, %d transport data connections, pipeline workers = GOMAXPROCS",
		p.Mode, p.Codec, pages, p.Settings.BatchBytes>>10, p.Settings.CheckpointBytes>>20, p.Settings.Streams)
}

// stream loads a real QEMU migration stream of the test guest once per run.
func stream(ctx context.Context, env *benchreport.Env, name string) ([]byte, error) {
	v, err := env.Memo("codecbench/stream/"+name, func() (any, error) {
		b, err := env.RealStream(ctx, name)
		if err != nil {
			return nil, err
		}
		if len(b) == 0 {
			return nil, fmt.Errorf("stream %s is empty", name)
		}
		return b, nil
	})
	if err != nil {
		return nil, err
	}
	return v.([]byte), nil
}

// why shortens an error to a table cell's reason.
func why(err error) string {
	s := err.Error()
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:197] + "..."
	}
	return s
}

// errNoStream marks measurements that need the real stream.
var errNoStream = errors.New("the real QEMU stream of the test guest is not available")

// missingAll adds every promised table and chart with the reason it could
// not be measured.
func missingAll(s *benchreport.Section, tables, figures []string, reason string) {
	for _, t := range tables {
		s.Add(&benchreport.Table{Title: t, Columns: []string{"result"}, Rows: [][]benchreport.Cell{{benchreport.Missing(reason)}}})
	}
	for _, f := range figures {
		s.Note("Chart %s: not drawn: %s.", f, reason)
	}
}
