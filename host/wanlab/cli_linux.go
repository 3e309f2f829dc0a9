//go:build linux

package wanlab

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"
)

const usage = `usage: dwcp lab <command> [flags]

commands:
  profiles                 list the built-in link profiles
  up [--profile P] [...]   bring a lab up and keep it until interrupted
  selftest [--profile P]   measure profiles against their settings (all when no --profile)

Run "dwcp lab <command> -h" for the flags of a command.
`

// Main runs the `dwcp lab` command with args after "lab" and returns the
// exit status: 0 success, 1 failure, 2 usage error. `up` runs until ctx
// ends, so the caller should cancel ctx on SIGINT/SIGTERM.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "profiles":
		return cmdProfiles(args[1:], stdout, stderr)
	case "up":
		return cmdUp(ctx, args[1:], stdout, stderr)
	case "selftest":
		return cmdSelftest(ctx, args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "dwcp lab: unknown command %q\n%s", args[0], usage)
	return 2
}

func cmdProfiles(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dwcp lab profiles", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	tw := tabwriter.NewWriter(stdout, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tRTT\tRATE\tLOSS\tMTU\tQUEUE\tDESCRIPTION")
	for _, p := range Profiles() {
		rtt := p.RTT.String()
		if len(p.Steps) > 1 {
			rtt += " (varies)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t%d\t%s\t%s\n", p.Name, rtt, p.Rate, formatLoss(p.Loss), p.MTU, formatQueue(p.QueueBytes, p.QueueDelay), p.Description)
	}
	tw.Flush()
	return 0
}

// overrides are the flags that change a profile for `up`.
type overrides struct {
	rtt, jitter, rate, loss, queue string
	mtu                            int
}

func (o *overrides) register(fs *flag.FlagSet) {
	fs.StringVar(&o.rtt, "rtt", "", "override the round-trip time, e.g. 30ms")
	fs.StringVar(&o.jitter, "jitter", "", "override the jitter per direction, e.g. 2ms")
	fs.StringVar(&o.rate, "rate", "", "override the rate, e.g. 200mbit, 1g, unlimited")
	fs.StringVar(&o.loss, "loss", "", "override the loss per direction, e.g. 0.5%")
	fs.StringVar(&o.queue, "queue", "", "override the queue, as time (50ms) or bytes (256KiB)")
	fs.IntVar(&o.mtu, "mtu", 0, "override the MTU")
}

// apply changes p; any override drops the profile's schedule, which would
// otherwise undo it at the next step.
func (o *overrides) apply(p *Profile) error {
	changed := false
	if o.rtt != "" {
		d, err := time.ParseDuration(o.rtt)
		if err != nil {
			return fmt.Errorf("--rtt %q: %w", o.rtt, ErrBadValue)
		}
		p.RTT, changed = d, true
	}
	if o.jitter != "" {
		d, err := time.ParseDuration(o.jitter)
		if err != nil {
			return fmt.Errorf("--jitter %q: %w", o.jitter, ErrBadValue)
		}
		p.Jitter, changed = d, true
	}
	if o.rate != "" {
		r, err := ParseRate(o.rate)
		if err != nil {
			return fmt.Errorf("--rate: %w", err)
		}
		p.Rate, changed = r, true
	}
	if o.loss != "" {
		v, err := ParseLoss(o.loss)
		if err != nil {
			return fmt.Errorf("--loss: %w", err)
		}
		p.Loss, changed = v, true
	}
	if o.queue != "" {
		b, d, err := ParseQueue(o.queue)
		if err != nil {
			return fmt.Errorf("--queue: %w", err)
		}
		p.QueueBytes, p.QueueDelay, changed = b, d, true
	}
	if o.mtu != 0 {
		p.MTU, changed = o.mtu, true
	}
	if changed {
		p.Steps = nil
		p.Name += "+overrides"
	}
	return p.Validate()
}

func cmdUp(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dwcp lab up", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("profile", "internet", "profile name (see dwcp lab profiles)")
	hosts := fs.Int("hosts", 2, "number of hosts")
	subnet := fs.String("subnet", "10.77.0.0/24", "private IPv4 subnet of the hosts")
	stats := fs.Duration("stats", 0, "print counters at this interval (0: only at exit)")
	var ov overrides
	ov.register(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	p, err := LookupProfile(*name)
	if err == nil {
		err = ov.apply(&p)
	}
	var pfx netip.Prefix
	if err == nil {
		pfx, err = netip.ParsePrefix(*subnet)
		if err != nil {
			err = fmt.Errorf("--subnet %q: %w", *subnet, ErrBadValue)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "dwcp lab up: %v\n", err)
		return 2
	}
	l, err := New(ctx, Config{Profile: p, Hosts: *hosts, Subnet: pfx, Logf: func(f string, a ...any) { fmt.Fprintf(stderr, f+"\n", a...) }})
	if err != nil {
		fmt.Fprintf(stderr, "dwcp lab up: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "lab %s up, profile %s: %s\n", l.Name(), p.Name, p.Summary())
	for _, h := range l.Hosts() {
		fmt.Fprintf(stdout, "  %s  netns %-22s dev %s  addr %v/%d\n", h.Name, h.NetNS, h.Dev, h.Addr, h.Prefix.Bits())
	}
	fmt.Fprintf(stdout, "run a command in a host:  ip netns exec %s <command>\n", l.Host(0).NetNS)
	fmt.Fprintln(stdout, "interrupt to stop")

	var tick <-chan time.Time
	if *stats > 0 {
		t := time.NewTicker(*stats)
		defer t.Stop()
		tick = t.C
	}
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-tick:
			writeStats(stdout, l.Stats())
		}
	}
	writeStats(stdout, l.Stats())
	if err := l.Close(); err != nil {
		fmt.Fprintf(stderr, "dwcp lab up: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, "lab removed")
	return 0
}

func writeStats(w io.Writer, s Stats) {
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "link\tforwarded\tbytes\tqueue drops\tloss drops\tcut drops\tqueue now B\t")
	for _, k := range s.Links {
		fmt.Fprintf(tw, "%s->%s\t%d\t%d\t%d\t%d\t%d\t%d\t\n", k.From, k.To, k.Forwarded, k.ForwardedBytes, k.QueueDrops, k.LossDrops, k.CutDrops, k.QueueNowBytes)
	}
	tw.Flush()
	if s.Unroutable > 0 {
		fmt.Fprintf(w, "unroutable packets dropped: %d\n", s.Unroutable)
	}
}

func cmdSelftest(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dwcp lab selftest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	names := fs.String("profile", "", "comma-separated profiles to test (default: all)")
	dur := fs.Duration("duration", 0, "TCP measurement interval (default 3s)")
	warm := fs.Duration("warmup", 0, "TCP warm-up (default max(1s, 10 RTT))")
	probes := fs.Int("probes", 0, "RTT probes (default 40, or one schedule cycle)")
	asJSON := fs.Bool("json", false, "print the reports as JSON")
	streams := fs.Int("streams", 0, "parallel TCP connections of the bulk transfer (default 1)")
	cc := fs.String("cc", "", "TCP congestion control of the bulk transfer (default bbr, else the system's)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var profiles []Profile
	if *names == "" {
		profiles = Profiles()
	} else {
		for _, n := range strings.Split(*names, ",") {
			p, err := LookupProfile(strings.TrimSpace(n))
			if err != nil {
				fmt.Fprintf(stderr, "dwcp lab selftest: %v\n", err)
				return 2
			}
			profiles = append(profiles, p)
		}
	}
	opts := SelfTestOptions{Duration: *dur, Warmup: *warm, Probes: *probes, Congestion: *cc, Streams: *streams}
	var reports []*Report
	status := 0
	for _, p := range profiles {
		rep, err := selftestProfile(ctx, p, opts)
		if err != nil {
			fmt.Fprintf(stderr, "dwcp lab selftest: %v\n", err)
			if errors.Is(err, context.Canceled) {
				return 1
			}
			status = 1
			continue
		}
		if !rep.OK() {
			status = 1
		}
		reports = append(reports, rep)
		if !*asJSON {
			rep.WriteText(stdout)
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(reports); err != nil {
			fmt.Fprintf(stderr, "dwcp lab selftest: %v\n", err)
			return 1
		}
	}
	return status
}

func selftestProfile(ctx context.Context, p Profile, opts SelfTestOptions) (*Report, error) {
	l, err := New(ctx, Config{Profile: p})
	if err != nil {
		return nil, err
	}
	rep, err := SelfTest(ctx, l, opts)
	if cerr := l.Close(); err == nil && cerr != nil {
		err = cerr
	}
	return rep, err
}
