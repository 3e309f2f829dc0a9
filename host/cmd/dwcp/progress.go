package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/dwcp/dwcp/host/pipeline"
	"golang.org/x/term"
)

// progressPrinter redraws one status line on a terminal, or prints a line
// every few seconds otherwise (logs, CI).
type progressPrinter struct {
	w     io.Writer
	tty   bool
	total uint64
	snap  func() pipeline.Summary
	extra func() string
	stop  chan struct{}
	done  sync.WaitGroup
}

func startProgress(w io.Writer, tty bool, total uint64, snap func() pipeline.Summary, extra func() string) *progressPrinter {
	p := &progressPrinter{w: w, tty: tty, total: total, snap: snap, extra: extra, stop: make(chan struct{})}
	every := 10 * time.Second
	if p.tty {
		every = 250 * time.Millisecond
	}
	p.done.Add(1)
	go func() {
		defer p.done.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				if p.tty {
					fmt.Fprint(p.w, "\r\033[K")
				}
				return
			case <-t.C:
				p.print()
			}
		}
	}()
	return p
}

// isTerminal tells whether w is a terminal (progress then redraws one line).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func (p *progressPrinter) print() {
	s := p.snap()
	line := ""
	if p.total > 0 {
		pct := 100 * float64(s.BytesIn) / float64(p.total)
		width := 24
		filled := min(width, int(pct/100*float64(width)))
		bar := make([]byte, width)
		for i := range bar {
			bar[i] = ' '
			if i < filled {
				bar[i] = '='
			}
		}
		line = fmt.Sprintf("[%s] %5.1f%% ", bar, pct)
	}
	rate := 0.0
	if sec := s.Elapsed.Seconds(); sec > 0 {
		rate = float64(s.BytesIn) / sec
	}
	line += fmt.Sprintf("%s in, %s on the wire (%.2fx), %s/s", bytesString(s.BytesIn), bytesString(s.WireBytes), s.Ratio(), bytesString(uint64(rate)))
	if p.extra != nil {
		if e := p.extra(); e != "" {
			line += ", " + e
		}
	}
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s", line)
	} else {
		fmt.Fprintln(p.w, line)
	}
}

func (p *progressPrinter) Stop() {
	close(p.stop)
	p.done.Wait()
}

// bytesString prints a byte count with a binary unit.
func bytesString(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}
