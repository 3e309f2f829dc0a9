package plugin

import (
	"context"
	"errors"
	"fmt"

	"github.com/dwcp/dwcp/sdk"
	pb "github.com/dwcp/dwcp/sdk/internal/pb/pluginv1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// sentinelCodes pairs each sdk sentinel with its wire code. The order
// matters only for errors that wrap several sentinels: the first match wins.
var sentinelCodes = []struct {
	err  error
	code pb.ErrorCode
	grpc codes.Code
}{
	{sdk.ErrCorruptInput, pb.ErrorCode_ERROR_CODE_CORRUPT_INPUT, codes.DataLoss},
	{sdk.ErrTooLarge, pb.ErrorCode_ERROR_CODE_TOO_LARGE, codes.ResourceExhausted},
	{sdk.ErrInvalidArgument, pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, codes.InvalidArgument},
	{sdk.ErrUnsupported, pb.ErrorCode_ERROR_CODE_UNSUPPORTED, codes.Unimplemented},
	{sdk.ErrNotFound, pb.ErrorCode_ERROR_CODE_NOT_FOUND, codes.NotFound},
	{sdk.ErrUnavailable, pb.ErrorCode_ERROR_CODE_UNAVAILABLE, codes.Unavailable},
	{sdk.ErrFailedPrecondition, pb.ErrorCode_ERROR_CODE_FAILED_PRECONDITION, codes.FailedPrecondition},
	{sdk.ErrCanceled, pb.ErrorCode_ERROR_CODE_CANCELED, codes.Canceled},
	{context.Canceled, pb.ErrorCode_ERROR_CODE_CANCELED, codes.Canceled},
	{context.DeadlineExceeded, pb.ErrorCode_ERROR_CODE_CANCELED, codes.DeadlineExceeded},
}

// errorCode classifies err for the wire.
func errorCode(err error) (pb.ErrorCode, codes.Code) {
	for _, s := range sentinelCodes {
		if errors.Is(err, s.err) {
			return s.code, s.grpc
		}
	}
	return pb.ErrorCode_ERROR_CODE_INTERNAL, codes.Internal
}

// sentinelFor maps a wire code back to the sdk sentinel, or nil.
func sentinelFor(code pb.ErrorCode) error {
	switch code {
	case pb.ErrorCode_ERROR_CODE_CANCELED:
		return sdk.ErrCanceled
	case pb.ErrorCode_ERROR_CODE_INTERNAL, pb.ErrorCode_ERROR_CODE_UNSPECIFIED:
		return nil
	}
	for _, s := range sentinelCodes {
		if s.code == code {
			return s.err
		}
	}
	return nil
}

// toStatus turns a plugin's error into a gRPC status carrying ErrorDetail.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	code, gcode := errorCode(err)
	st := status.New(gcode, err.Error())
	if withDetail, derr := st.WithDetails(&pb.ErrorDetail{Code: code, Message: err.Error()}); derr == nil {
		st = withDetail
	}
	return st.Err()
}

// RemoteError is an error a plugin returned, as the host sees it. It
// unwraps to the matching sdk sentinel.
type RemoteError struct {
	Plugin   string
	Message  string
	sentinel error
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("plugin %s: %s", e.Plugin, e.Message)
}

func (e *RemoteError) Unwrap() error { return e.sentinel }

// newRemoteError builds the host-side error for a wire code and message.
func newRemoteError(plugin string, code pb.ErrorCode, msg string) error {
	return &RemoteError{Plugin: plugin, Message: msg, sentinel: sentinelFor(code)}
}

// fromStatus converts an error from a gRPC call into a RemoteError when
// the plugin sent one; transport errors are returned as they are, for the
// caller to tell a dead plugin from a failed call.
func fromStatus(plugin string, err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	for _, d := range st.Details() {
		if detail, ok := d.(*pb.ErrorDetail); ok {
			return newRemoteError(plugin, detail.Code, detail.Message)
		}
	}
	return err
}
