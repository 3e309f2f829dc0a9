package main

import (
	"context"
	"encoding/json"

	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dwcp/dwcp/host/agent"
	"github.com/dwcp/dwcp/host/internal/pb/streamv1"
	"github.com/dwcp/dwcp/host/metrics"
	"github.com/dwcp/dwcp/host/migrate"
	"github.com/dwcp/dwcp/host/modes"
	"github.com/dwcp/dwcp/host/pagestore"
	"github.com/dwcp/dwcp/host/pipeline"
	"github.com/dwcp/dwcp/host/transport"
	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/codec"
	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"
)

// hostFlags are the flags every command that talks to peers shares.
type hostFlags struct {
	pluginDir string
	certsDir  string
	name      string
	stateDir  string
	overrides string
	verbose   bool
	// historyLimit bounds the page history (STATE-DIR/pages); 0 turns it off.
	historyLimit sizeValue
}

// defaultStateDir is $DWCP_STATE, else ~/.local/state/dwcp.
func defaultStateDir() string {
	if d := os.Getenv("DWCP_STATE"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	return filepath.Join(home, ".local", "state", "dwcp")
}

func (h *hostFlags) register(cmd *cobra.Command) {
	name := os.Getenv("DWCP_NAME")
	if name == "" {
		name, _ = os.Hostname()
	}
	certsDir := os.Getenv("DWCP_CERTS")
	if certsDir == "" {
		certsDir = "certs"
	}
	cmd.Flags().StringVar(&h.pluginDir, "plugin-dir", defaultPluginDir(), "plugin directory (holds catalog.json)")
	cmd.Flags().StringVar(&h.certsDir, "certs", certsDir, "directory with ca.pem and this host's NAME.pem, NAME-key.pem ($DWCP_CERTS)")
	cmd.Flags().StringVar(&h.name, "name", name, "this host's name, as in its certificate ($DWCP_NAME)")
	cmd.Flags().BoolVarP(&h.verbose, "verbose", "v", false, "log plugin and transport details to stderr")
	cmd.Flags().StringVar(&h.stateDir, "state-dir", defaultStateDir(), "where path measurements per peer are kept between sessions ($DWCP_STATE)")
	cmd.Flags().StringVar(&h.overrides, "overrides", "", "mode overrides file: per-peer or global mode, thresholds (default: STATE-DIR/overrides.json if present)")
	h.historyLimit = sizeValue(pagestore.DefaultLimit)
	cmd.Flags().Var(&h.historyLimit, "history-limit", "disk space for the page history in STATE-DIR/pages, pages of earlier migrations with each peer that later ones need not send again (0: no history)")
}

// openHistory opens the host's page history as the flags say, or returns
// nil.
func (h *hostFlags) openHistory(log io.Writer) *pagestore.Store {
	return openHistory(h.stateDir, int64(h.historyLimit), log)
}

func (h *hostFlags) open(ctx context.Context, stderr io.Writer, kinds ...sdk.Kind) (*agent.Agent, error) {
	level := hclog.Warn
	if h.verbose {
		level = hclog.Debug
	}
	logger := hclog.New(&hclog.LoggerOptions{Name: "dwcp", Level: level, Output: stderr})
	overrides := h.overrides
	if overrides == "" && h.stateDir != "" {
		overrides = filepath.Join(h.stateDir, "overrides.json")
	}
	return agent.Open(ctx, agent.Config{PluginDir: h.pluginDir, CertsDir: h.certsDir, Name: h.name, Logger: logger, Kinds: kinds,
		StateDir: h.stateDir, OverridesFile: overrides, WindowLog: windowLog})
}

// sendSummary is what `dwcp send` reports.
type sendSummary struct {
	Name        string                  `json:"name"`
	BytesIn     uint64                  `json:"bytes_in"`
	WireBytes   uint64                  `json:"bytes_on_wire"`
	Ratio       float64                 `json:"ratio"`
	Savings     float64                 `json:"savings_percent"`
	Seconds     float64                 `json:"seconds"`
	Throughput  float64                 `json:"throughput_bytes_per_second"`
	QEMU        bool                    `json:"qemu_stream"`
	Codec       string                  `json:"codec"`
	Level       int                     `json:"level"`
	PageStage   bool                    `json:"page_stage"`
	Reconnects  uint64                  `json:"reconnects"`
	TCPBytes    uint64                  `json:"tcp_bytes_sent"`
	Batches     uint64                  `json:"batches"`
	Checkpoints uint64                  `json:"checkpoints"`
	Pages       pipeline.PageStats      `json:"pages"`
	History     pipeline.HistorySummary `json:"history"`
	Mode        string                  `json:"mode"`
	Decisions   string                  `json:"controller"`
}

func newSendCommand() *cobra.Command {
	var hf hostFlags
	var to, peerName, codecName, pageStage, mode string
	var level, streams int
	var asJSON, history bool
	cmd := &cobra.Command{
		Use:   "send FILE|- --to HOST:PORT",
		Short: "Send a file or stream (a saved VM state, a checkpoint) to a peer's `dwcp serve`",
		Long: "send carries any stream to a peer through DWCP's pipeline and transport (mutual TLS,\n" +
			"several connections, resumable). A QEMU migration stream is recognised by itself and\n" +
			"handled page by page. The peer writes it into its --out-dir under the file's base name.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if err := checkStreams(streams); err != nil {
				return err
			}
			if cmd.Flags().Changed("level") && codecName == "" {
				return fmt.Errorf("--level %d needs --codec", level)
			}
			var in io.Reader
			var size uint64
			name := filepath.Base(args[0])
			if args[0] == "-" {
				in, name = os.Stdin, "stdin"
			} else {
				f, err := os.Open(args[0])
				if err != nil {
					return err
				}
				defer f.Close()
				if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
					size = uint64(fi.Size())
				}
				in = f
			}
			// Accelerators are not used by the pipeline yet: do not start them.
			a, err := hf.open(ctx, cmd.ErrOrStderr(), sdk.KindCodec)
			if err != nil {
				return err
			}
			defer a.Close()
			var stderr io.Writer = io.Discard
			if !asJSON {
				stderr = cmd.ErrOrStderr()
			}
			codecs, sess, plan, err := connectAndPlan(ctx, stderr, a, to, peerName, mode, nil, streams, &setupSteps{})
			if err != nil {
				return err
			}
			defer sess.Close()
			choice := plan.Settings.Start
			var policy pipeline.Policy = plan.Controller
			if codecName != "" {
				if choice, err = agent.PickCodec(codecs, codecName, level); err != nil {
					return err
				}
				policy = pipeline.FixedPolicy(choice)
			}
			cfg := pipeline.SourceConfig{Codecs: codecs, Policy: policy, Name: name, ExpectedLength: size, Mode: plan.Mode.String(),
				BatchBytes: plan.Settings.BatchBytes, CheckpointBytes: plan.Settings.CheckpointBytes}
			switch pageStage {
			case "auto":
				cfg.PageStage = plan.PageStage()
			case "on":
				cfg.PageStage = pipeline.DefaultPageStage()
			}
			if pageStage == "on" {
				cfg.Kind = pipeline.KindQEMU
			}
			if cfg.PageStage != nil && history && plan.Mode != modes.Datacenter {
				if st := hf.openHistory(cmd.ErrOrStderr()); st != nil {
					defer st.Close()
					cfg.History = historyFor(plan, cfg.PageStage, st, sess.PeerName(), false)
				}
			}
			prog := &pipeline.Progress{}
			bar := startProgress(cmd.ErrOrStderr(), isTerminal(cmd.ErrOrStderr()), size, prog.Snapshot, func() string {
				if st := sess.Stats(); st.Reconnects > 0 {
					return fmt.Sprintf("%d reconnects", st.Reconnects)
				}
				return ""
			})
			sum, err := pipeline.Send(ctx, in, sess, cfg, prog)
			bar.Stop()
			if err != nil {
				return fmt.Errorf("send %s to %s: %w", name, to, err)
			}
			if err := plan.Remember(); err != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "dwcp: keeping the path measurement: %v\n", err)
			}
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_ = sess.CloseWrite(cctx)
			cancel()
			st := sess.Stats()
			out := sendSummary{
				Name: name, BytesIn: sum.BytesIn, WireBytes: sum.WireBytes, Ratio: sum.Ratio(),
				Seconds: sum.Elapsed.Seconds(), QEMU: sum.QEMU, Level: choice.Level, PageStage: cfg.PageStage != nil && sum.QEMU,
				Mode: plan.Mode.String(), Decisions: plan.Controller.Summary(),
				Reconnects: st.Reconnects, TCPBytes: st.WireBytesSent, Batches: sum.Batches, Checkpoints: sum.Checkpoints, Pages: sum.Pages,
				History: sum.History,
			}
			out.Codec = codecLabel(codecs, choice.Codec)
			if sum.BytesIn > 0 {
				out.Savings = 100 * (1 - float64(sum.WireBytes)/float64(sum.BytesIn))
			}
			if out.Seconds > 0 {
				out.Throughput = float64(sum.BytesIn) / out.Seconds
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(out)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "sent %s to %s: %s in, %s on the wire (%.2fx, %.1f%% saved), %.2f s, %s/s\n",
				name, to, bytesString(out.BytesIn), bytesString(out.WireBytes), out.Ratio, out.Savings, out.Seconds, bytesString(uint64(out.Throughput)))
			fmt.Fprintf(w, "codec %s level %d, QEMU stream %v, page stage %v, %d batches, %d checkpoints, %d reconnects, %s TCP+TLS bytes\n",
				out.Codec, out.Level, out.QEMU, out.PageStage, out.Batches, out.Checkpoints, out.Reconnects, bytesString(out.TCPBytes))
			if policy == pipeline.Policy(plan.Controller) {
				fmt.Fprintf(w, "mode %s; %s\n", out.Mode, out.Decisions)
			}
			if out.PageStage {
				p := out.Pages
				fmt.Fprintf(w, "pages %d: zero %d, duplicate %d, known %d, delta %d, full %d, stored %d\n", p.Pages, p.Zero, p.Duplicate, p.Known, p.Delta, p.Full, p.Stored)
			}
			if l := historyLine(out.History, out.Pages.Known); l != "" {
				fmt.Fprintln(w, l)
			}
			return nil
		},
	}
	hf.register(cmd)
	cmd.Flags().StringVar(&to, "to", "", "peer address `HOST:PORT` of dwcp serve")
	cmd.Flags().StringVar(&peerName, "peer-name", "", "name the peer's certificate must carry (default: the host part of --to)")
	cmd.Flags().StringVar(&mode, "mode", "auto", "auto (measure the path), datacenter, hybrid or internet")
	cmd.Flags().StringVar(&codecName, "codec", "", "fix the codec (zstd, s2, lz4, ... or none: store) instead of letting the controller choose")
	cmd.Flags().IntVar(&level, "level", -1, "with --codec: the codec level (-1: the codec's default)")
	cmd.Flags().StringVar(&pageStage, "page-stage", "auto", "page stage for QEMU streams: auto (as the mode says), on (treat input as QEMU), off")
	cmd.Flags().IntVar(&streams, "streams", 0, streamsUsage)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the summary as JSON")
	cmd.Flags().BoolVar(&history, "history", true, "use and extend the page history with this peer (internet and hybrid modes)")
	_ = cmd.MarkFlagRequired("to")
	return cmd
}

// connectAndPlan opens the session to a peer's serve, measures the path and
// plans the session (mode, codec ladder, controller).
// connectAndPlan opens a session to the peer and plans it; the chosen path
// and mode are reported on log.
// connectAndPlan dials the peer and plans the session. streams is the
// user's --streams: 0 lets the controller size the connection count to the
// path (starting from defaultStreams), N pins it at N.
func connectAndPlan(ctx context.Context, log io.Writer, a *agent.Agent, to, peerName, mode string, pin *agent.CodecPin, streams int, steps *setupSteps) ([]pipeline.Codec, *transport.Session, *agent.SessionPlan, error) {
	t := time.Now()
	pinned := streams != 0
	if !pinned {
		streams = defaultStreams
	}
	sess, err := a.Dial(ctx, to, peerName, streams, transport.Options{})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("connect to %s: %w", to, err)
	}
	steps.ConnectMs = msSince(t)
	t = time.Now()
	plan, err := a.PlanSession(ctx, sess, sess.PeerName(), mode, pin, pinned)
	steps.PlanMs = msSince(t)
	if err != nil {
		sess.Close()
		return nil, nil, nil, err
	}
	fmt.Fprintf(log, "path to %s: %v; mode %s (%s)\n", to, plan.Probe.Path, plan.Mode, plan.Why)
	return plan.Codecs, sess, plan, nil
}

// defaultStreams is the data connections a session opens with before the
// path is measured, when the user did not pin a count.
const defaultStreams = 4

// checkStreams validates --streams: 0 (sized to the path) or 1..64.
func checkStreams(n int) error {
	if n < 0 || n > 64 {
		return fmt.Errorf("--streams %d: want 0 (sized to the path) or 1..64", n)
	}
	return nil
}

const streamsUsage = "TCP data connections: 0 sizes them to the path (starting with 4), N pins N"

// setupSteps is where the time before the first byte went.
type setupSteps struct {
	// PluginsMs: verify, describe and launch the plugins; this runs in the
	// background, beside connect and plan.
	PluginsMs float64 `json:"plugins"`
	ConnectMs float64 `json:"connect"` // TCP + mutual TLS to the peer
	PlanMs    float64 `json:"plan"`    // path probe (or cached measurement), then the mode once the plugins are up
	// BeforeMigrationMs: from the command's start to the migration's.
	BeforeMigrationMs float64 `json:"before_migration"`
	// ViaDaemon: the migration ran inside the host's `dwcp serve`.
	ViaDaemon bool `json:"via_daemon"`
}

func msSince(t time.Time) float64 { return float64(time.Since(t).Microseconds()) / 1000 }

func codecLabel(codecs []pipeline.Codec, id uint8) string {
	for _, c := range codecs {
		if c.ID == id {
			return c.Algorithm
		}
	}
	return "none"
}

func newServeCommand() *cobra.Command {
	var hf hostFlags
	var listen, outDir, control, metricsAddr string
	var once bool
	cmd := &cobra.Command{
		Use:   "serve --listen ADDR --out-dir DIR",
		Short: "Accept streams from peers (the DWCP daemon)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if err := os.MkdirAll(outDir, 0o755); err != nil {
				return err
			}
			a, err := hf.open(ctx, cmd.ErrOrStderr(), sdk.KindCodec, sdk.KindHypervisor)
			if err != nil {
				return err
			}
			defer a.Close()
			_, byAlgo, err := a.Codecs()
			if err != nil {
				return err
			}
			l, err := a.Listen(ctx, listen, transport.Options{})
			if err != nil {
				return err
			}
			defer l.Close()
			// The daemon holds the page history for every session it
			// serves and every migration it runs for `dwcp migrate`.
			hist := hf.openHistory(cmd.ErrOrStderr())
			if hist != nil {
				defer hist.Close()
			}
			act := newActivity(daemonStatus{Version: version, Name: hf.name, Listen: l.Addr().String(), Started: time.Now()})
			explicit := control != ""
			if !explicit && !once {
				control = controlSocketPath(hf.stateDir)
			}
			var m *metrics.Metrics
			if metricsAddr != "" {
				m = metrics.New(version)
			}
			if control != "" && control != "none" {
				cs, err := listenControl(control, a, hist, func(format string, args ...any) {
					fmt.Fprintf(cmd.OutOrStdout(), "dwcp serve: "+format+"\n", args...)
				})
				switch {
				case err == nil:
					cs.metrics, cs.activity = m, act
					cs.serve(ctx)
					defer cs.Close()
				case explicit:
					return err
				default:
					// A second daemon on this host (another port):
					// the first one keeps the control socket.
					fmt.Fprintf(cmd.ErrOrStderr(), "dwcp serve: no control socket: %v\n", err)
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "dwcp serve: listening on %s as %s, writing to %s\n", l.Addr(), hf.name, outDir)
			if m != nil {
				ms, err := startMetrics(metricsAddr, m, func(format string, args ...any) {
					fmt.Fprintf(cmd.ErrOrStderr(), "dwcp serve: "+format+"\n", args...)
				})
				if err != nil {
					return err
				}
				defer ms.Close()
				fmt.Fprintf(cmd.OutOrStdout(), "dwcp serve: metrics on http://%s/metrics\n", ms.addr)
			}
			for {
				sess, err := l.Accept(ctx)
				if err != nil {
					if ctx.Err() != nil {
						return nil
					}
					return err
				}
				err = receiveOne(ctx, cmd, a, hist, sess, outDir, byAlgo, m, act)
				if err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "dwcp serve: session from %s failed: %v\n", sess.PeerName(), err)
				}
				if once {
					return err
				}
			}
		},
	}
	hf.register(cmd)
	cmd.Flags().StringVar(&listen, "listen", ":4650", "address to listen on")
	cmd.Flags().StringVar(&outDir, "out-dir", ".", "directory received files are written to")
	cmd.Flags().BoolVar(&once, "once", false, "exit after one session (exit status tells whether it succeeded)")
	cmd.Flags().StringVar(&metricsAddr, "metrics", "", "serve Prometheus metrics (sessions, bytes, durations, downtime; Go runtime and process) at http://ADDR/metrics, e.g. 127.0.0.1:9650 (default: off)")
	cmd.Flags().StringVar(&control, "control", "", "unix `SOCKET` where dwcp migrate on this host hands migrations over (default: STATE_DIR/control.sock unless --once; none: off)")
	return cmd
}

// receiveOne serves one session: a migration, or a stream into outDir.
// Sessions are served one at a time: a migration needs the host's cores
// more than a second one does.
func receiveOne(ctx context.Context, cmd *cobra.Command, a *agent.Agent, hist *pagestore.Store, sess *transport.Session, outDir string, codecs map[string]codec.Codec, m *metrics.Metrics, act *activity) (err error) {
	defer sess.Close()
	note, done := act.begin(sessionStatus{Direction: "in", Peer: sess.PeerName()})
	defer done()
	start := time.Now()
	ended := m.Started(metrics.In)
	var res migrate.DestResult
	defer func() {
		kind := metrics.Transfer
		if res.Hello.GetMigrationId() != "" {
			kind = metrics.Migration
		}
		ended(metrics.Session{Kind: kind, Err: err, Duration: time.Since(start),
			StreamBytes: res.Pipeline.BytesIn, WireBytes: res.Pipeline.WireBytes})
	}()
	var final string
	logf := func(format string, args ...any) {
		line := fmt.Sprintf(format, args...)
		note(line)
		fmt.Fprintf(cmd.OutOrStdout(), "dwcp serve: %s\n", line)
	}
	opts := migrate.DestOptions{
		DestConfig: pipeline.DestConfig{Codecs: codecs, PageStage: pipeline.PageStageDecoder, Name: sess.PeerName()},
		Hypervisor: a.Hypervisor,
		OnEvent:    func(s string) { logf("%s", s) },
		RawOutput: func(_ context.Context, h *streamv1.Hello) (io.Writer, func(bool) error, error) {
			base := filepath.Base(filepath.Clean("/" + h.Name))
			if base == "/" || base == "." || strings.HasPrefix(base, ".") {
				return nil, nil, fmt.Errorf("refusing file name %q", h.Name)
			}
			final = filepath.Join(outDir, base)
			note("receiving " + final)
			tmp, err := os.CreateTemp(outDir, "."+base+".partial-*")
			if err != nil {
				return nil, nil, err
			}
			return tmp, func(ok bool) error {
				err := tmp.Sync()
				if cerr := tmp.Close(); err == nil {
					err = cerr
				}
				if ok && err == nil {
					err = os.Rename(tmp.Name(), final)
				}
				if !ok || err != nil {
					os.Remove(tmp.Name())
				}
				return err
			}, nil
		},
	}
	if hist != nil {
		opts.History = &pipeline.History{Store: hist, Peer: sess.PeerName()}
	}
	conn, err := agent.AnswerProbe(ctx, sess)
	if err != nil {
		return err
	}
	res, err = migrate.Destination(ctx, conn, opts)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_ = sess.CloseWrite(cctx)
	cancel()
	sum := res.Pipeline
	if l := historyLine(sum.History, 0); l != "" {
		logf("%s", l)
	}
	if res.VM != "" {
		state := "running"
		if res.Paused {
			state = "loaded and paused (the source asked for --suspend)"
		}
		logf("migration %s from %s complete: VM %s %s here; %s, %s on the wire (%.2fx), %.2f s",
			res.Hello.MigrationId, sess.PeerName(), res.VM, state, bytesString(sum.BytesIn), bytesString(sum.WireBytes), sum.Ratio(), sum.Elapsed.Seconds())
		return nil
	}
	fmt.Fprintf(cmd.OutOrStdout(), "received %s from %s: %s, %s on the wire (%.2fx), %.2f s, digest verified\n",
		final, sess.PeerName(), bytesString(sum.BytesIn), bytesString(sum.WireBytes), sum.Ratio(), sum.Elapsed.Seconds())
	return nil
}
