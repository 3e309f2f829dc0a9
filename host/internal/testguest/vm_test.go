package testguest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testMemMiB is the guest size for the harness tests: small keeps the streams and
// the boot short, while the guest still holds a payload, a heap and both writers.
const testMemMiB = 128

// TestGuest boots one guest and proves the harness on it: the serial protocol, a
// captured stream, and a plain QEMU migration to a second QEMU over a unix socket.
func TestGuest(t *testing.T) {
	g := Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	cfg := Config{Guest: g, MemMiB: testMemMiB, Name: "src"}
	src := StartT(ctx, t, cfg)
	bootStart := time.Now()
	info, err := src.WaitReady(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("guest ready after %.1fs wall; config %v; mem %v", time.Since(bootStart).Seconds(), info.Config, info.Mem)

	t.Run("serial", func(t *testing.T) {
		if g.Payload != "" && info.Config["sum_src"] != "disk" {
			t.Errorf("sum_src = %q, want disk (payload attached)", info.Config["sum_src"])
		}
		if got := info.Config["dirty_kbps"]; got != "1024" {
			t.Errorf("dirty_kbps = %q, want the default 1024", got)
		}
		first, err := src.Heartbeat()
		if err != nil {
			t.Fatal(err)
		}
		next, err := src.WaitHeartbeat(ctx, first.N+1)
		if err != nil {
			t.Fatal(err)
		}
		// The guest paces heartbeats by its uptime and catches up after a late one,
		// so two lines can be closer than a second; they can never go backwards.
		if next.N < first.N+2 || next.Up <= first.Up {
			t.Errorf("heartbeat %d at %v, then %d at %v: want the count and the uptime to advance",
				first.N, first.Up, next.N, next.Up)
		}
		c1, err := src.WaitChecksumFrom(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		c2, err := src.WaitChecksumFrom(ctx, c1.Line+1)
		if err != nil {
			t.Fatal(err)
		}
		if c1.Sum != c2.Sum || c2.N <= c1.N {
			t.Errorf("checksum lines %+v then %+v: want the same sum, increasing n", c1, c2)
		}
		want, err := g.ExpectedChecksum(c1.MiB)
		if err != nil {
			t.Fatal(err)
		}
		if c1.Sum != want {
			t.Errorf("guest checksum %s of %d MiB, host computed %s", c1.Sum, c1.MiB, want)
		}
	})

	t.Run("capture", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "stream.bin")
		res, err := src.Capture(ctx, out, CaptureOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("captured %d bytes in %v: %d passes, %d zero + %d normal pages, downtime %d ms",
			res.Bytes, res.Wall, res.Passes(), res.Info.RAM.Duplicate, res.Info.RAM.Normal, res.Info.DowntimeMs)
		if res.Info.Status != "completed" {
			t.Errorf("query-migrate status %q, want completed", res.Info.Status)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(b)) != res.Bytes {
			t.Errorf("file holds %d bytes, reader counted %d", len(b), res.Bytes)
		}
		if !bytes.HasPrefix(b, []byte{'Q', 'E', 'V', 'M', 0, 0, 0, 3}) {
			t.Errorf("stream starts % x, want QEVM v3", b[:min(len(b), 8)])
		}
		if !strings.HasPrefix(res.Stream.Machine, "pc-q35-") {
			t.Errorf("machine %q, want pc-q35-*", res.Stream.Machine)
		}
		ram := res.Info.RAM
		memPages := int64(testMemMiB) << 20 / 4096
		if ram.Normal == 0 || ram.Duplicate == 0 || ram.Normal+ram.Duplicate < memPages {
			t.Errorf("normal %d + zero %d pages, want both non-zero and at least the guest's %d pages",
				ram.Normal, ram.Duplicate, memPages)
		}
		// Every normal page is 4 KiB of payload plus its record header.
		if res.Bytes < ram.Normal*4096 || res.Bytes < ram.NormalBytes {
			t.Errorf("stream of %d bytes cannot hold %d normal pages", res.Bytes, ram.Normal)
		}
		if st, err := src.Status(ctx); err != nil || st != "running" {
			t.Errorf("after the capture the source is %q (%v), want running again", st, err)
		}
		mark := src.SerialLines()
		if _, _, err := src.WaitSerialFrom(ctx, mark, heartbeatRE); err != nil {
			t.Errorf("no heartbeat after resuming: %v", err)
		}
	})

	t.Run("migrate", func(t *testing.T) {
		dcfg := cfg
		dcfg.Name = "dst"
		dcfg.Incoming = "defer"
		dst := StartT(ctx, t, dcfg)
		uri := "unix:" + filepath.Join(dst.Dir(), "migrate.sock")
		if err := dst.MigrateIncoming(ctx, uri); err != nil {
			t.Fatal(err)
		}
		sum, err := src.Checksum()
		if err != nil {
			t.Fatal(err)
		}
		mi, err := src.Migrate(ctx, uri, MigrationParams{MaxBandwidth: 1 << 30})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("migrated in %d ms, downtime %d ms, %d bytes, %d passes",
			mi.TotalTimeMs, mi.DowntimeMs, mi.RAM.Transferred, mi.RAM.DirtySyncCount)
		if mi.Status != "completed" {
			t.Fatalf("source migration status %q", mi.Status)
		}
		last, err := src.Heartbeat()
		if err != nil {
			t.Fatal(err)
		}
		if err := dst.WaitStatus(ctx, "running"); err != nil {
			t.Fatal(err)
		}
		if st, err := src.Status(ctx); err != nil || st != "postmigrate" {
			t.Errorf("source status %q (%v), want postmigrate", st, err)
		}
		// The destination's console starts where the source's stopped: a guest that
		// rebooted would count from 0 again.
		m, idx, err := dst.WaitSerialFrom(ctx, 0, heartbeatRE)
		if err != nil {
			t.Fatal(err)
		}
		firstN, _ := strconv.Atoi(m[1])
		if firstN < last.N {
			t.Errorf("destination's first heartbeat is %d, the source had reached %d: the guest restarted", firstN, last.N)
		}
		hb, err := dst.WaitHeartbeat(ctx, firstN+1)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("source stopped at hb=%d, destination continued hb=%d (line %d) .. hb=%d", last.N, firstN, idx, hb.N)
		c, err := dst.WaitChecksumFrom(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		if c.Sum != sum.Sum {
			t.Errorf("checksum on the destination %s, on the source %s", c.Sum, sum.Sum)
		}
	})
}

// childEnv marks the helper process of TestNoOrphanQEMU.
const childEnv = "DWCP_TESTGUEST_ORPHAN_CHILD"

// TestNoOrphanQEMU kills a process that owns a running QEMU, the way a crashed or
// timed-out test dies, and checks that QEMU goes with it. It also checks that
// Close ends QEMU and removes the VM directory.
func TestNoOrphanQEMU(t *testing.T) {
	if os.Getenv(childEnv) == "1" {
		orphanChild()
		return
	}
	g := Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	vm, err := Start(ctx, Config{Guest: g, MemMiB: testMemMiB})
	if err != nil {
		t.Fatal(err)
	}
	pid, dir := vm.Pid(), vm.Dir()
	if err := vm.Close(); err != nil {
		t.Fatal(err)
	}
	if alive(pid) {
		t.Errorf("QEMU %d still runs after Close", pid)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("VM directory %s still exists after Close (%v)", dir, err)
	}

	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestNoOrphanQEMU$")
	cmd.Env = append(os.Environ(), childEnv+"=1", "DWCP_GUEST_DIR="+g.Dir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("child did not report its QEMU: %v", err)
	}
	var qpid int
	if _, err := fmt.Sscanf(line, "qemu-pid %d", &qpid); err != nil || !alive(qpid) {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("child reported %q (%v)", line, err)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for alive(qpid) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if alive(qpid) {
		_ = syscall.Kill(qpid, syscall.SIGKILL)
		t.Fatalf("QEMU %d outlived the process that started it", qpid)
	}
}

// orphanChild starts a VM, reports QEMU's pid and waits to be killed.
func orphanChild() {
	g, err := LoadGuest(os.Getenv("DWCP_GUEST_DIR"))
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	vm, err := Start(context.Background(), Config{Guest: g, MemMiB: testMemMiB})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Printf("qemu-pid %d\n", vm.Pid())
	select {}
}

// alive reports whether pid runs; a zombie waiting to be reaped does not count.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}
