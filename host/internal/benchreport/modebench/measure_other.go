//go:build !linux

package modebench

import (
	"context"

	"github.com/dwcp/dwcp/host/internal/benchreport"
)

func measure(_ context.Context, _ *benchreport.Env, s *benchreport.Section) error {
	unavailable(s, "the WAN lab (host/wanlab) needs Linux")
	return nil
}
