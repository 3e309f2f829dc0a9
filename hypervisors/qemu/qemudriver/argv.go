package qemudriver

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/dwcp/dwcp/sdk"
)

// vmConfig is what VMConfig.Data carries from a source to a destination: the
// source QEMU's command line and what the driver resolved about it.
type vmConfig struct {
	Version int      `json:"version"`
	Argv    []string `json:"argv"`
	// Machine is the concrete machine type the source runs (pc-q35-7.2),
	// which replaces an alias such as q35: the alias can name a newer type
	// on the destination's QEMU, and QEMU refuses a stream from another one.
	Machine string `json:"machine,omitempty"`
	// QMPPath is the socket the driver used on the source; that monitor is
	// replaced by the driver's own on the destination, not copied.
	QMPPath     string `json:"qmp_path,omitempty"`
	QEMUVersion string `json:"qemu_version,omitempty"`
	MemoryBytes uint64 `json:"memory_bytes,omitempty"`
}

const vmConfigVersion = 1

// Limits on a command line read from /proc or from a VMConfig: far above
// any real QEMU invocation, low enough that a hostile config cannot make the
// plugin allocate without bound.
const (
	maxArgs     = 4096
	maxArgBytes = 1 << 20
)

func encodeConfig(c vmConfig) ([]byte, error) {
	c.Version = vmConfigVersion
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encode vm config: %w", err)
	}
	return b, nil
}

// decodeConfig reads VMConfig.Data and checks that it is a command line
// the driver can rewrite.
func decodeConfig(data []byte) (vmConfig, error) {
	var c vmConfig
	if len(data) > 2*maxArgBytes {
		return c, fmt.Errorf("decode vm config: %w: %d bytes", sdk.ErrTooLarge, len(data))
	}
	if err := json.Unmarshal(data, &c); err != nil {
		return c, fmt.Errorf("decode vm config: %w: %w", sdk.ErrInvalidArgument, err)
	}
	if c.Version != vmConfigVersion {
		return c, fmt.Errorf("decode vm config: %w: version %d, this driver reads %d", sdk.ErrInvalidArgument, c.Version, vmConfigVersion)
	}
	if err := checkArgv(c.Argv); err != nil {
		return c, fmt.Errorf("decode vm config: %w", err)
	}
	if strings.ContainsAny(c.Machine, ",\x00") {
		return c, fmt.Errorf("decode vm config: %w: machine type %q", sdk.ErrInvalidArgument, c.Machine)
	}
	return c, nil
}

func checkArgv(argv []string) error {
	if len(argv) == 0 || argv[0] == "" {
		return fmt.Errorf("%w: empty command line", sdk.ErrInvalidArgument)
	}
	if len(argv) > maxArgs {
		return fmt.Errorf("%w: %d arguments, limit %d", sdk.ErrTooLarge, len(argv), maxArgs)
	}
	total := 0
	for i, a := range argv {
		total += len(a)
		if strings.IndexByte(a, 0) >= 0 {
			return fmt.Errorf("%w: argument %d holds a NUL byte", sdk.ErrInvalidArgument, i)
		}
	}
	if total > maxArgBytes {
		return fmt.Errorf("%w: command line of %d bytes, limit %d", sdk.ErrTooLarge, total, maxArgBytes)
	}
	return nil
}

// flagOptions are QEMU options that take no argument (qemu-options.hx
// entries without HAS_ARG). Every other option takes exactly one.
var flagOptions = map[string]bool{
	"-h": true, "-help": true, "-version": true, "-S": true, "-s": true,
	"-snapshot": true, "-nographic": true, "-no-reboot": true, "-no-shutdown": true,
	"-daemonize": true, "-nodefaults": true, "-no-user-config": true, "-nodefconfig": true,
	"-enable-kvm": true, "-no-kvm": true, "-no-hpet": true, "-no-acpi": true,
	"-full-screen": true, "-alt-grab": true, "-ctrl-grab": true, "-no-quit": true,
	"-no-frame": true, "-sdl": true, "-curses": true, "-portrait": true,
	"-win2k-hack": true, "-rtc-td-hack": true, "-usb": true, "-no-fd-bootchk": true,
	"-semihosting": true, "-only-migratable": true, "-preconfig": true,
	"-singlestep": true, "-enable-sync-profile": true, "-mem-prealloc": true,
	"-no-kvm-irqchip": true, "-no-kvm-pit": true, "-no-kvm-pit-reinjection": true,
	"-show-cursor": true, "-old-param": true, "-localtime": true, "-xen-attach": true,
	"-xen-domid-restrict": true, "-enable-fips": true, "-audio-help": true,
}

// argOptions are options known to take an argument; they let the scanner
// tell an unknown flag (followed by a known option) from an unknown option
// with a value.
var argOptions = map[string]bool{
	"-machine": true, "-M": true, "-cpu": true, "-accel": true, "-smp": true, "-m": true,
	"-name": true, "-uuid": true, "-kernel": true, "-initrd": true, "-append": true,
	"-dtb": true, "-drive": true, "-blockdev": true, "-device": true, "-netdev": true,
	"-nic": true, "-net": true, "-chardev": true, "-serial": true, "-parallel": true,
	"-monitor": true, "-qmp": true, "-qmp-pretty": true, "-mon": true, "-display": true,
	"-vga": true, "-vnc": true, "-spice": true, "-incoming": true, "-pidfile": true,
	"-D": true, "-d": true, "-object": true, "-global": true, "-boot": true,
	"-rtc": true, "-bios": true, "-L": true, "-k": true, "-audiodev": true,
	"-fsdev": true, "-virtfs": true, "-numa": true, "-icount": true, "-watchdog": true,
	"-watchdog-action": true, "-runas": true, "-chroot": true, "-sandbox": true,
	"-trace": true, "-plugin": true, "-msg": true, "-action": true, "-overcommit": true,
	"-mem-path": true, "-smbios": true, "-fw_cfg": true, "-add-fd": true,
	"-iscsi": true, "-tpmdev": true, "-set": true, "-readconfig": true,
	"-compat": true, "-async-teardown": true, "-gdb": true, "-cdrom": true,
	"-hda": true, "-hdb": true, "-hdc": true, "-hdd": true, "-fda": true, "-fdb": true,
	"-mtdblock": true, "-sd": true, "-pflash": true, "-option-rom": true,
	"-tb-size": true, "-semihosting-config": true, "-loadvm": true,
}

// option is one element of a command line: an option with its argument, or
// a positional word.
type option struct {
	name    string // "-machine" (a leading "--" is folded to "-"); "" for positional
	raw     string // the option as written, kept in the output
	arg     string
	hasArg  bool
	missing bool // a known option that takes an argument ends the line
}

// splitArgv groups argv[1:] into options. An option that is neither in
// flagOptions nor in argOptions takes an argument unless the next word is a
// known option.
func splitArgv(args []string) []option {
	var out []option
	for i := 0; i < len(args); i++ {
		a := args[i]
		if len(a) < 2 || a[0] != '-' {
			out = append(out, option{arg: a, hasArg: true})
			continue
		}
		name := a
		if strings.HasPrefix(name, "--") {
			name = name[1:]
		}
		takes := argOptions[name]
		if !takes && !flagOptions[name] {
			takes = i+1 < len(args) && !knownOption(args[i+1])
		}
		if takes && i+1 < len(args) {
			out = append(out, option{name: name, raw: a, arg: args[i+1], hasArg: true})
			i++
			continue
		}
		out = append(out, option{name: name, raw: a, missing: takes})
	}
	return out
}

func knownOption(a string) bool {
	if strings.HasPrefix(a, "--") {
		a = a[1:]
	}
	return flagOptions[a] || argOptions[a]
}

// optPart is one key=value of a QemuOpts string ("socket,id=c0,path=/x").
// A part without '=' (the implied first key, or a bare flag) has noKey set.
type optPart struct {
	key, value string
	noKey      bool
}

// parseOpts splits a QemuOpts string; ",," is a literal comma.
func parseOpts(s string) []optPart {
	var parts []optPart
	var cur strings.Builder
	flush := func() {
		p := cur.String()
		cur.Reset()
		if k, v, ok := strings.Cut(p, "="); ok {
			parts = append(parts, optPart{key: k, value: v})
		} else {
			parts = append(parts, optPart{value: p, noKey: true})
		}
	}
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			if i+1 < len(s) && s[i+1] == ',' {
				cur.WriteByte(',')
				i++
				continue
			}
			flush()
			continue
		}
		cur.WriteByte(s[i])
	}
	flush()
	return parts
}

func formatOpts(parts []optPart) string {
	var b strings.Builder
	for i, p := range parts {
		if i > 0 {
			b.WriteByte(',')
		}
		if !p.noKey {
			b.WriteString(strings.ReplaceAll(p.key, ",", ",,"))
			b.WriteByte('=')
		}
		b.WriteString(strings.ReplaceAll(p.value, ",", ",,"))
	}
	return b.String()
}

// rewriter carries the state of one argv rewrite.
type rewriter struct {
	cfg    vmConfig
	runDir string
	n      map[string]int // per-kind counters for new file names
	serial bool           // the command line names a serial port
}

// name returns the next run-directory path for kind: the first serial file
// is serial.log (tests read the guest's console there), later ones
// serial1.log, serial2.log, ... Names stay short: unix socket paths are
// limited to 108 bytes.
func (r *rewriter) name(kind, ext string) string {
	i := r.n[kind]
	r.n[kind]++
	if i == 0 && kind == "serial" {
		return filepath.Join(r.runDir, "serial.log")
	}
	return filepath.Join(r.runDir, kind+strconv.Itoa(i+1)+ext)
}

// rewriteArgv turns the source's command line into the destination's: host
// resources that belong to one QEMU process (monitors, consoles, the pid
// file) move into runDir, the migration options are replaced with
// `-incoming defer -S`, and QEMU daemonizes itself so that the VM does not
// depend on the plugin process. Disk images and other paths are kept: the
// destination must see the same storage at the same paths.
func rewriteArgv(cfg vmConfig, runDir string) ([]string, error) {
	if err := checkArgv(cfg.Argv); err != nil {
		return nil, fmt.Errorf("rewrite argv: %w", err)
	}
	r := &rewriter{cfg: cfg, runDir: runDir, n: map[string]int{}}
	out := []string{cfg.Argv[0]}
	machineSeen, nographic := false, false
	for _, o := range splitArgv(cfg.Argv[1:]) {
		if o.missing {
			return nil, fmt.Errorf("rewrite argv: %w: option %s lacks its argument", sdk.ErrInvalidArgument, o.name)
		}
		switch o.name {
		case "":
			out = append(out, o.arg)
			continue
		case "-daemonize", "-pidfile", "-incoming", "-S":
			// Replaced below by the driver's own, exactly once.
			continue
		case "-nographic":
			// -nographic puts the console on stdio, which a daemon lacks.
			nographic = true
			out = append(out, "-display", "none")
			continue
		case "-machine", "-M":
			if o.hasArg {
				machineSeen = true
				o.arg = r.machine(o.arg)
			}
		case "-qmp", "-qmp-pretty":
			if o.hasArg {
				if p, ok := legacyPath(o.arg); ok && p == cfg.QMPPath {
					// The driver's monitor on the source; its own replaces it.
					continue
				}
				o.arg = r.monitorSpec(o.arg, "qmp")
			}
		case "-monitor":
			if o.hasArg {
				o.arg = r.monitorSpec(o.arg, "monitor")
			}
		case "-serial":
			if o.hasArg {
				r.serial = true
				o.arg = r.serialSpec(o.arg)
			}
		case "-chardev":
			if o.hasArg {
				o.arg = r.chardev(o.arg)
			}
		case "-D":
			if o.hasArg {
				o.arg = r.name("debug", ".log")
			}
		}
		out = append(out, o.raw)
		if o.hasArg {
			out = append(out, o.arg)
		}
	}
	if !machineSeen && cfg.Machine != "" {
		out = append(out, "-machine", cfg.Machine)
	}
	if nographic && !r.serial {
		out = append(out, "-serial", "file:"+r.name("serial", ".log"))
	}
	out = append(out,
		"-qmp", "unix:"+filepath.Join(runDir, "qmp.sock")+",server=on,wait=off",
		"-incoming", "defer",
		"-S",
		"-daemonize",
		"-pidfile", filepath.Join(runDir, "qemu.pid"),
	)
	return out, nil
}

// machine replaces the machine type in a -machine value with the concrete
// type the source resolved, keeping every other property.
func (r *rewriter) machine(arg string) string {
	if r.cfg.Machine == "" {
		return arg
	}
	parts := parseOpts(arg)
	for i, p := range parts {
		if (i == 0 && p.noKey) || (!p.noKey && p.key == "type") {
			parts[i].value = r.cfg.Machine
			return formatOpts(parts)
		}
	}
	return formatOpts(append([]optPart{{key: "type", value: r.cfg.Machine}}, parts...))
}

// legacyPath returns the path of a "unix:PATH[,opts]" or "file:PATH"
// character device spec (the short syntax of -qmp, -monitor and -serial).
func legacyPath(spec string) (string, bool) {
	for _, pre := range []string{"unix:", "file:"} {
		if rest, ok := strings.CutPrefix(spec, pre); ok {
			p, _, _ := strings.Cut(rest, ",")
			return p, true
		}
	}
	return "", false
}

// monitorSpec moves a monitor's socket into the run directory. A monitor on
// stdio becomes a socket there too: a daemon has no stdio.
func (r *rewriter) monitorSpec(spec, kind string) string {
	switch {
	case spec == "stdio" || spec == "mon:stdio":
		return "unix:" + r.name(kind, ".sock") + ",server=on,wait=off"
	case strings.HasPrefix(spec, "unix:"):
		_, opts, _ := strings.Cut(strings.TrimPrefix(spec, "unix:"), ",")
		return joinSpec("unix:"+r.name(kind, ".sock"), opts)
	case strings.HasPrefix(spec, "file:"):
		_, opts, _ := strings.Cut(strings.TrimPrefix(spec, "file:"), ",")
		return joinSpec("file:"+r.name(kind, ".log"), opts)
	}
	return spec
}

// serialSpec sends a console that wrote to a file or stdio to a file in the
// run directory, and moves unix sockets there.
func (r *rewriter) serialSpec(spec string) string {
	switch {
	case spec == "stdio" || spec == "mon:stdio" || strings.HasPrefix(spec, "file:"):
		return "file:" + r.name("serial", ".log")
	case strings.HasPrefix(spec, "unix:"):
		_, opts, _ := strings.Cut(strings.TrimPrefix(spec, "unix:"), ",")
		return joinSpec("unix:"+r.name("serial", ".sock"), opts)
	}
	return spec
}

func joinSpec(head, opts string) string {
	if opts == "" {
		return head
	}
	return head + "," + opts
}

// chardev moves the files and sockets of a -chardev into the run directory
// and turns a stdio backend into a file.
func (r *rewriter) chardev(arg string) string {
	parts := parseOpts(arg)
	if len(parts) == 0 {
		return arg
	}
	backend := ""
	bi := -1
	for i, p := range parts {
		if (i == 0 && p.noKey) || (!p.noKey && p.key == "backend") {
			backend, bi = p.value, i
			break
		}
	}
	kept := parts[:0:0]
	hasPath := false
	for i, p := range parts {
		switch {
		case i == bi && backend == "stdio":
			p.value = "file"
		case backend == "stdio" && !p.noKey && p.key == "signal":
			continue
		case !p.noKey && p.key == "path" && (backend == "socket" || backend == "file"):
			ext := ".sock"
			if backend == "file" {
				ext = ".log"
			}
			p.value = r.name("chardev", ext)
			hasPath = true
		case !p.noKey && p.key == "logfile":
			p.value = r.name("chardevlog", ".log")
		}
		kept = append(kept, p)
	}
	if backend == "stdio" && !hasPath {
		kept = append(kept, optPart{key: "path", value: r.name("chardev", ".log")})
	}
	return formatOpts(kept)
}
