package qemudriver

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dwcp/dwcp/sdk"
)

// testguestArgv is the command line host/internal/testguest starts the test
// guest with (a source the e2e test migrates).
func testguestArgv(dir string) []string {
	return []string{
		"qemu-system-x86_64", "-name", "dwcp-guest", "-machine", "q35", "-accel", "tcg",
		"-smp", "1", "-m", "128", "-kernel", "/cache/guest/vmlinuz", "-initrd", "/cache/guest/initramfs.gz",
		"-append", "console=ttyS0 panic=-1 quiet dwcp.sum_every=2 -incoming -S",
		"-nic", "none", "-display", "none", "-monitor", "none",
		"-serial", "file:" + dir + "/serial.log",
		"-qmp", "unix:" + dir + "/qmp.sock,server=on,wait=off",
		"-no-reboot",
		"-drive", "file=/cache/guest/payload.img,format=raw,if=virtio,readonly=on",
	}
}

func TestRewriteTestGuest(t *testing.T) {
	src := "/tmp/dwcp-vm-1"
	run := "/run/dwcp/qemu/dst-1"
	got, err := rewriteArgv(vmConfig{Argv: testguestArgv(src), Machine: "pc-q35-7.2", QMPPath: src + "/qmp.sock"}, run)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"qemu-system-x86_64", "-name", "dwcp-guest", "-machine", "pc-q35-7.2", "-accel", "tcg",
		"-smp", "1", "-m", "128", "-kernel", "/cache/guest/vmlinuz", "-initrd", "/cache/guest/initramfs.gz",
		// -append's words are the guest's, not QEMU options.
		"-append", "console=ttyS0 panic=-1 quiet dwcp.sum_every=2 -incoming -S",
		"-nic", "none", "-display", "none", "-monitor", "none",
		"-serial", "file:" + run + "/serial.log",
		// The source's QMP socket (the one the driver used) is dropped.
		"-no-reboot",
		"-drive", "file=/cache/guest/payload.img,format=raw,if=virtio,readonly=on",
		"-qmp", "unix:" + run + "/qmp.sock,server=on,wait=off",
		"-incoming", "defer", "-S", "-daemonize", "-pidfile", run + "/qemu.pid",
	}
	if !slices.Equal(got, want) {
		t.Errorf("rewrite:\n got %q\nwant %q", got, want)
	}
}

func TestRewriteArgvCases(t *testing.T) {
	run := "/r/d"
	cases := []struct {
		name    string
		in      []string
		machine string
		want    []string // the rewritten options before the driver's tail
	}{
		{
			name: "own migration options replaced once",
			in:   []string{"q", "-S", "-incoming", "tcp:0:4444", "-daemonize", "-pidfile", "/var/run/x.pid", "--incoming", "defer"},
			want: []string{"q"},
		},
		{
			name:    "machine alias with properties",
			in:      []string{"q", "-M", "q35,accel=kvm,usb=off"},
			machine: "pc-q35-7.2",
			want:    []string{"q", "-M", "pc-q35-7.2,accel=kvm,usb=off"},
		},
		{
			name:    "machine type= form and no type",
			in:      []string{"q", "-machine", "accel=tcg,type=pc", "-machine", "accel=tcg"},
			machine: "pc-i440fx-7.2",
			want:    []string{"q", "-machine", "accel=tcg,type=pc-i440fx-7.2", "-machine", "type=pc-i440fx-7.2,accel=tcg"},
		},
		{
			name:    "machine added when absent",
			in:      []string{"q", "-m", "256"},
			machine: "pc-i440fx-7.2",
			want:    []string{"q", "-m", "256", "-machine", "pc-i440fx-7.2"},
		},
		{
			name: "monitors and consoles move into the run directory",
			in: []string{"q", "-qmp", "unix:/var/lib/a.sock,server,nowait", "-monitor", "stdio",
				"-serial", "mon:stdio", "-serial", "unix:/x/con.sock,server=on", "-serial", "pty", "-D", "/var/log/q.log"},
			want: []string{"q", "-qmp", "unix:/r/d/qmp1.sock,server,nowait", "-monitor", "unix:/r/d/monitor1.sock,server=on,wait=off",
				"-serial", "file:/r/d/serial.log", "-serial", "unix:/r/d/serial2.sock,server=on", "-serial", "pty", "-D", "/r/d/debug1.log"},
		},
		{
			name: "chardevs",
			in: []string{"q", "-chardev", "socket,id=mon0,path=/var/lib/libvirt/mon.sock,server=on,wait=off",
				"-chardev", "file,id=f,path=/var/log/con,,sole.log,logfile=/l.log", "-chardev", "stdio,id=s,signal=off,mux=on",
				"-chardev", "socket,id=t,host=0.0.0.0,port=4000,server=on", "-mon", "chardev=mon0,mode=control"},
			want: []string{"q", "-chardev", "socket,id=mon0,path=/r/d/chardev1.sock,server=on,wait=off",
				"-chardev", "file,id=f,path=/r/d/chardev2.log,logfile=/r/d/chardevlog1.log", "-chardev", "file,id=s,mux=on,path=/r/d/chardev3.log",
				"-chardev", "socket,id=t,host=0.0.0.0,port=4000,server=on", "-mon", "chardev=mon0,mode=control"},
		},
		{
			name: "nographic becomes a file console",
			in:   []string{"q", "-nographic", "-m", "64"},
			want: []string{"q", "-display", "none", "-m", "64", "-serial", "file:/r/d/serial.log"},
		},
		{
			name: "unknown flag before a known option, unknown option with value, positional image",
			in:   []string{"q", "-new-flag", "-m", "64", "-new-opt", "v", "disk.img"},
			want: []string{"q", "-new-flag", "-m", "64", "-new-opt", "v", "disk.img"},
		},
		{
			name: "dangling unknown option is a flag",
			in:   []string{"q", "-new-flag"},
			want: []string{"q", "-new-flag"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := rewriteArgv(vmConfig{Argv: c.in, Machine: c.machine}, run)
			if err != nil {
				t.Fatal(err)
			}
			tail := []string{"-qmp", "unix:/r/d/qmp.sock,server=on,wait=off", "-incoming", "defer", "-S", "-daemonize", "-pidfile", "/r/d/qemu.pid"}
			want := append(slices.Clone(c.want), tail...)
			if !slices.Equal(got, want) {
				t.Errorf("rewrite %q:\n got %q\nwant %q", c.in, got, want)
			}
		})
	}
}

func TestRewriteArgvRejects(t *testing.T) {
	for _, argv := range [][]string{nil, {""}, {"q", "-m"}, {"q", "-machine", "pc", "-qmp"}, {"q", "a\x00b"}} {
		if out, err := rewriteArgv(vmConfig{Argv: argv}, "/r"); !errors.Is(err, sdk.ErrInvalidArgument) {
			t.Errorf("rewriteArgv(%q) = %q, %v; want sdk.ErrInvalidArgument", argv, out, err)
		}
	}
}

func TestOptsRoundTrip(t *testing.T) {
	for _, s := range []string{"a", "a,b=c", "file,path=/x,,y,z=1", "k=v,,,,w", ",", ""} {
		if got := formatOpts(parseOpts(s)); got != s {
			t.Errorf("formatOpts(parseOpts(%q)) = %q", s, got)
		}
	}
	p := parseOpts("file,path=/a,,b")
	if len(p) != 2 || p[1].value != "/a,b" {
		t.Errorf("parseOpts: %+v", p)
	}
}

func TestDecodeConfig(t *testing.T) {
	good, err := encodeConfig(vmConfig{Argv: []string{"qemu-system-x86_64", "-m", "64"}, Machine: "pc-q35-7.2"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := decodeConfig(good)
	if err != nil || c.Machine != "pc-q35-7.2" || len(c.Argv) != 3 {
		t.Fatalf("decodeConfig(%s) = %+v, %v", good, c, err)
	}
	for _, bad := range []string{
		``, `{}`, `{"version":2,"argv":["q"]}`, `{"version":1,"argv":[]}`, `{"version":1,"argv":[""]}`,
		`{"version":1,"argv":["q","a\u0000b"]}`, `{"version":1,"argv":["q"],"machine":"pc,accel=kvm"}`,
	} {
		if _, err := decodeConfig([]byte(bad)); err == nil {
			t.Errorf("decodeConfig(%s) succeeded", bad)
		} else if !errors.Is(err, sdk.ErrInvalidArgument) {
			t.Errorf("decodeConfig(%s) = %v; want sdk.ErrInvalidArgument", bad, err)
		}
	}
	huge := make([]string, maxArgs+1)
	for i := range huge {
		huge[i] = "x"
	}
	b, _ := encodeConfig(vmConfig{Argv: huge})
	if _, err := decodeConfig(b); !errors.Is(err, sdk.ErrTooLarge) {
		t.Errorf("a %d-argument config: %v; want sdk.ErrTooLarge", len(huge), err)
	}
}

func TestBinaryFor(t *testing.T) {
	d := &Driver{}
	for _, bad := range []string{"/bin/sh", "sh", "qemu-img", "/usr/bin/qemu-system-x86_64/../../../bin/sh", "qemu-system-"} {
		if _, err := d.binaryFor(bad); !errors.Is(err, sdk.ErrInvalidArgument) {
			t.Errorf("binaryFor(%q) = %v; want a refusal", bad, err)
		}
	}
}

// FuzzRewriteArgv feeds NUL-separated command lines to the rewriter and
// checks what the destination gets: exactly one -incoming (defer), one -S,
// one -daemonize and one pid file in the run directory, the driver's QMP
// socket, and no path of a socket or console outside the run directory.
func FuzzRewriteArgv(f *testing.F) {
	f.Add([]byte(strings.Join(testguestArgv("/src"), "\x00")))
	f.Add([]byte("q\x00-nographic\x00-serial\x00stdio\x00-incoming\x00x\x00-S\x00-S"))
	f.Add([]byte("q\x00-chardev\x00stdio,id=a\x00-chardev\x00socket,path=/p,,x,id=b\x00-qmp\x00unix:/q,server"))
	f.Add([]byte("q\x00--machine\x00type=q35,,x\x00-M\x00\x00-monitor\x00file:/m\x00-D\x00/d"))
	const run = "/run/x"
	f.Fuzz(func(t *testing.T, data []byte) {
		argv := strings.Split(string(data), "\x00")
		out, err := rewriteArgv(vmConfig{Argv: argv, Machine: "pc-q35-7.2", QMPPath: "/src/qmp.sock"}, run)
		if err != nil {
			if !errors.Is(err, sdk.ErrInvalidArgument) && !errors.Is(err, sdk.ErrTooLarge) {
				t.Fatalf("error %v wraps no sentinel", err)
			}
			return
		}
		if out[0] != argv[0] {
			t.Fatalf("program changed: %q", out[0])
		}
		opts := splitArgv(out[1:])
		count := map[string]int{}
		for _, o := range opts {
			count[o.name]++
			switch o.name {
			case "-incoming":
				if o.arg != "defer" {
					t.Fatalf("-incoming %q", o.arg)
				}
			case "-pidfile", "-D":
				if filepath.Dir(o.arg) != run {
					t.Fatalf("%s %q outside the run directory", o.name, o.arg)
				}
			case "-qmp", "-qmp-pretty", "-monitor", "-serial":
				if p, ok := legacyPath(o.arg); ok && filepath.Dir(p) != run {
					t.Fatalf("%s %q outside the run directory", o.name, o.arg)
				}
				if o.arg == "stdio" || o.arg == "mon:stdio" {
					t.Fatalf("%s on stdio in a daemon", o.name)
				}
			case "-chardev":
				parts := parseOpts(o.arg)
				if len(parts) > 0 && parts[0].noKey && parts[0].value == "stdio" {
					t.Fatalf("-chardev on stdio in a daemon: %q", o.arg)
				}
			}
		}
		// The rewriter's own tail is recognised as written.
		for _, name := range []string{"-incoming", "-daemonize", "-pidfile", "-S"} {
			if count[name] != 1 {
				t.Fatalf("%s appears %d times in %q", name, count[name], out)
			}
		}
		if !slices.Contains(out, "unix:"+run+"/qmp.sock,server=on,wait=off") {
			t.Fatalf("no driver QMP socket in %q", out)
		}
		if count["-nographic"] > 0 {
			t.Fatalf("-nographic kept: %q", out)
		}
	})
}
