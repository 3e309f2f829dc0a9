package plugin

import (
	"fmt"
	"strings"
	"testing"
)

func TestStderrTailKeepsPanicAndLastLines(t *testing.T) {
	tail := newStderrTail(5)
	fmt.Fprintf(tail, "starting\npanic: boom\n")
	for i := 0; i < 50; i++ {
		fmt.Fprintf(tail, "frame %d\n", i)
	}
	fmt.Fprint(tail, "partial")
	got := strings.Join(tail.Lines(), "|")
	if !strings.HasPrefix(got, "panic: boom|frame 0|") {
		t.Fatalf("panic start not pinned: %s", got)
	}
	if !strings.HasSuffix(got, "frame 46|frame 47|frame 48|frame 49|partial") {
		t.Fatalf("last lines missing: %s", got)
	}
	short := newStderrTail(10)
	fmt.Fprint(short, "a\r\n\nb\n")
	if got := strings.Join(short.Lines(), "|"); got != "a|b" {
		t.Fatalf("short tail: %s", got)
	}
}
