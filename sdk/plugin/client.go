package plugin

import (
	"context"
	"errors"
	"fmt"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/accel"
	"github.com/dwcp/dwcp/sdk/codec"
	"github.com/dwcp/dwcp/sdk/hypervisor"
	pb "github.com/dwcp/dwcp/sdk/internal/pb/pluginv1"
	"github.com/dwcp/dwcp/sdk/internal/shm"
	"google.golang.org/grpc"
)

type bidiOpener func(ctx context.Context, opts ...grpc.CallOption) (grpc.BidiStreamingClient[pb.Chunk, pb.Chunk], error)

// bulkCall moves one block through the plugin: over shared memory when the
// block fits a slot, else (or when the output outgrows the slot) over the
// gRPC fallback stream.
func (i *Instance) bulkCall(op string, dpOp uint32, arg int64, in, dst []byte, maxOut int, open bidiOpener) ([]byte, error) {
	if i.dp != nil {
		// CallTimeout, not a context.WithTimeout: the shared-memory path
		// allocates nothing per call, and the limit costs nothing there.
		_, slotOut := i.dp.Limits()
		out, err := i.dp.CallTimeout(context.Background(), i.callTimeout, dpOp, arg, in, dst, min(maxOut, slotOut))
		var re *shm.RemoteError
		switch {
		case err == nil:
			return out, nil
		case errors.Is(err, shm.ErrTooBig):
		case errors.As(err, &re) && pb.ErrorCode(re.Code) == pb.ErrorCode_ERROR_CODE_TOO_LARGE && maxOut > slotOut:
			// The output outgrew the slot but not the caller's limit.
		default:
			return dst, i.annotate(op, err)
		}
	}
	return i.streamCall(op, dpOp, arg, in, dst, maxOut, open)
}

// streamCall moves one block through the gRPC fallback stream.
func (i *Instance) streamCall(op string, dpOp uint32, arg int64, in, dst []byte, maxOut int, open bidiOpener) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), i.callTimeout)
	defer cancel()
	stream, err := open(ctx)
	if err != nil {
		return dst, i.annotate(op, err)
	}
	h := &pb.ChunkHeader{Op: dpOp, Arg: arg, TotalLen: uint64(len(in)), MaxOut: uint64(maxOut)}
	if err := sendChunks(stream, h, in); err != nil {
		return dst, i.annotate(op, streamErr(stream, err))
	}
	if err := stream.CloseSend(); err != nil {
		return dst, i.annotate(op, err)
	}
	out, err := recvBody(stream, dst, nil, -1, maxOut)
	if err != nil {
		return dst, i.annotate(op, err)
	}
	return out, nil
}

// streamErr prefers the server's status over io.EOF from Send, which only
// says the server ended the stream.
func streamErr(stream grpc.BidiStreamingClient[pb.Chunk, pb.Chunk], err error) error {
	if _, rerr := stream.Recv(); rerr != nil {
		return rerr
	}
	return err
}

type remoteCodec struct {
	inst   *Instance
	client pb.CodecClient
	caps   codec.Capabilities
}

func (c *remoteCodec) Capabilities() codec.Capabilities { return c.caps }

func (c *remoteCodec) Encode(dst, src []byte, level int) ([]byte, error) {
	return c.inst.bulkCall("encode", opEncode, int64(level), src, dst, c.encodeMaxOut(len(src)), c.client.Encode)
}

// encodeMaxOut is the output room an encode of n bytes gets.
func (c *remoteCodec) encodeMaxOut(n int) int {
	maxOut := c.caps.Bound.Max(n)
	if maxOut < n+n/8+1024 {
		// A plugin that understates its bound still gets room to fail
		// cleanly with ErrTooLarge rather than a truncated block.
		maxOut = n + n/8 + 1024
	}
	return maxOut
}

func (c *remoteCodec) Decode(dst, src []byte, maxSize int) ([]byte, error) {
	if maxSize < 0 {
		return dst, fmt.Errorf("decode: negative maxSize %d: %w", maxSize, sdk.ErrInvalidArgument)
	}
	return c.inst.bulkCall("decode", opDecode, 0, src, dst, maxSize, c.client.Decode)
}

type remoteAccel struct {
	inst   *Instance
	client pb.AcceleratorClient
	caps   accel.Capabilities
}

func (a *remoteAccel) Capabilities() accel.Capabilities { return a.caps }

// accelMaxOut bounds an operation's output from its definition.
func accelMaxOut(op accel.Op, arg int64, n int) (int, error) {
	switch op {
	case accel.OpZeroScan, accel.OpHashXXH3:
		if arg <= 0 || arg > 1<<30 {
			return 0, fmt.Errorf("accelerator %s: page size %d: %w", op, arg, sdk.ErrInvalidArgument)
		}
		per := 1
		if op == accel.OpHashXXH3 {
			per = 16
		}
		return (n/int(arg) + 1) * per, nil
	case accel.OpXOR:
		return n/2 + 1, nil
	case accel.OpCompress:
		return n + n/8 + 64<<10, nil
	case accel.OpDecompress:
		if arg < 0 || arg > maxFallbackBlock {
			return 0, fmt.Errorf("accelerator %s: output limit %d: %w", op, arg, sdk.ErrInvalidArgument)
		}
		return int(arg), nil
	}
	return 0, fmt.Errorf("accelerator op %d: %w", op, sdk.ErrUnsupported)
}

func (a *remoteAccel) Run(dst []byte, op accel.Op, arg int64, in []byte) ([]byte, error) {
	maxOut, err := accelMaxOut(op, arg, len(in))
	if err != nil {
		return dst, err
	}
	return a.inst.bulkCall(op.String(), uint32(op), arg, in, dst, maxOut, a.client.Run)
}

type remoteHypervisor struct {
	inst   *Instance
	client pb.HypervisorClient
}

func (h *remoteHypervisor) Capabilities(ctx context.Context) (hypervisor.Capabilities, error) {
	fp, err := h.inst.Fingerprint(ctx)
	if err != nil {
		return hypervisor.Capabilities{}, err
	}
	if fp.Hypervisor == nil {
		return hypervisor.Capabilities{}, fmt.Errorf("plugin %s sent no hypervisor capabilities", h.inst.desc.Name)
	}
	if fp.Health.Status == sdk.Unhealthy {
		return *fp.Hypervisor, fmt.Errorf("plugin %s: %s: %w", h.inst.desc.Name, fp.Health.Detail, sdk.ErrUnavailable)
	}
	return *fp.Hypervisor, nil
}

func (h *remoteHypervisor) ListVMs(ctx context.Context) ([]hypervisor.VMInfo, error) {
	resp, err := h.client.ListVMs(ctx, &pb.ListVMsRequest{})
	if err != nil {
		return nil, h.inst.annotate("list VMs", err)
	}
	out := make([]hypervisor.VMInfo, 0, len(resp.Vms))
	for _, v := range resp.Vms {
		out = append(out, vmInfoFromPB(v))
	}
	return out, nil
}

func (h *remoteHypervisor) InspectVM(ctx context.Context, vm hypervisor.VMRef) (hypervisor.VMInfo, error) {
	resp, err := h.client.InspectVM(ctx, &pb.InspectVMRequest{Vm: vmRefToPB(vm)})
	if err != nil {
		return hypervisor.VMInfo{}, h.inst.annotate("inspect VM", err)
	}
	return vmInfoFromPB(resp), nil
}

func (h *remoteHypervisor) PrepareSource(ctx context.Context, vm hypervisor.VMRef, p hypervisor.Params) (string, hypervisor.VMInfo, error) {
	resp, err := h.client.PrepareSource(ctx, &pb.PrepareSourceRequest{Vm: vmRefToPB(vm), Params: paramsToPB(p)})
	if err != nil {
		return "", hypervisor.VMInfo{}, h.inst.annotate("prepare source", err)
	}
	return resp.MigrationId, vmInfoFromPB(resp.Vm), nil
}

func (h *remoteHypervisor) PrepareDestination(ctx context.Context, req hypervisor.DestinationRequest) (string, hypervisor.VMRef, error) {
	resp, err := h.client.PrepareDestination(ctx, &pb.PrepareDestinationRequest{
		Vm:               vmRefToPB(req.VM),
		Config:           vmConfigToPB(req.Config),
		IncomingEndpoint: req.IncomingEndpoint,
		Params:           paramsToPB(req.Params),
	})
	if err != nil {
		return "", hypervisor.VMRef{}, h.inst.annotate("prepare destination", err)
	}
	return resp.MigrationId, vmRefFromPB(resp.Vm), nil
}

func (h *remoteHypervisor) StartMigration(ctx context.Context, id, endpoint string) error {
	_, err := h.client.StartMigration(ctx, &pb.StartMigrationRequest{MigrationId: id, OutgoingEndpoint: endpoint})
	return h.inst.annotate("start migration", err)
}

// WatchMigration relays the plugin's event stream. The relaying goroutine
// ends when the stream ends or ctx is done, and closes the channel.
func (h *remoteHypervisor) WatchMigration(ctx context.Context, id string) (<-chan hypervisor.Event, error) {
	stream, err := h.client.WatchMigration(ctx, &pb.WatchMigrationRequest{MigrationId: id})
	if err != nil {
		return nil, h.inst.annotate("watch migration", err)
	}
	md, err := stream.Header()
	if err != nil {
		return nil, h.inst.annotate("watch migration", err)
	}
	if len(md.Get(watchAcceptedKey)) == 0 {
		// Refused before any header: the status says why.
		_, err := stream.Recv()
		if err == nil {
			err = fmt.Errorf("watch stream started without acceptance")
		}
		return nil, h.inst.annotate("watch migration", err)
	}
	out := make(chan hypervisor.Event, 16)
	go func() {
		defer close(out)
		for {
			e, err := stream.Recv()
			if err != nil {
				return
			}
			select {
			case out <- eventFromPB(e):
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

func (h *remoteHypervisor) QueryMigration(ctx context.Context, id string) (hypervisor.Status, error) {
	resp, err := h.client.QueryMigration(ctx, &pb.QueryMigrationRequest{MigrationId: id})
	if err != nil {
		return hypervisor.Status{}, h.inst.annotate("query migration", err)
	}
	return statusFromPB(resp), nil
}

func (h *remoteHypervisor) SetLimits(ctx context.Context, id string, p hypervisor.Params) error {
	_, err := h.client.SetLimits(ctx, &pb.SetLimitsRequest{MigrationId: id, Params: paramsToPB(p)})
	return h.inst.annotate("set limits", err)
}

func (h *remoteHypervisor) CancelMigration(ctx context.Context, id string) error {
	_, err := h.client.CancelMigration(ctx, &pb.CancelMigrationRequest{MigrationId: id})
	return h.inst.annotate("cancel migration", err)
}

func (h *remoteHypervisor) FinishMigration(ctx context.Context, id string, resume bool) (hypervisor.Status, error) {
	resp, err := h.client.FinishMigration(ctx, &pb.FinishMigrationRequest{MigrationId: id, Resume: resume})
	if err != nil {
		return hypervisor.Status{}, h.inst.annotate("finish migration", err)
	}
	return statusFromPB(resp.Status), nil
}

// FinishMigrationPaused implements hypervisor.PausedFinisher for every
// plugin client; hypervisor.CanFinishPaused tells whether the plugin
// behind it can. It asks the plugin only when its fingerprint says so: a
// plugin built before keep_paused existed would read the request as
// resume=false and discard the VM. A reply that does not confirm the VM
// is paused is an error.
func (h *remoteHypervisor) FinishMigrationPaused(ctx context.Context, id string) (hypervisor.Status, error) {
	caps, err := h.Capabilities(ctx)
	if err != nil {
		return hypervisor.Status{}, fmt.Errorf("finish migration %s paused: %w", id, err)
	}
	if !caps.FinishPaused {
		return hypervisor.Status{}, fmt.Errorf("finish migration %s paused: plugin %s cannot leave a VM paused (built against an SDK without PausedFinisher, or does not implement it): %w",
			id, h.inst.desc.Name, sdk.ErrUnsupported)
	}
	resp, err := h.client.FinishMigration(ctx, &pb.FinishMigrationRequest{MigrationId: id, KeepPaused: true})
	if err != nil {
		return hypervisor.Status{}, h.inst.annotate("finish migration paused", err)
	}
	st := statusFromPB(resp.Status)
	if !resp.Paused {
		return st, fmt.Errorf("finish migration %s paused: plugin %s did not confirm the VM is paused: %w", id, h.inst.desc.Name, sdk.ErrFailedPrecondition)
	}
	return st, nil
}

var _ hypervisor.PausedFinisher = (*remoteHypervisor)(nil)
