package sdk

import "errors"

// Sentinel errors a plugin returns (wrapped with %w as it likes). The SDK
// carries the category across the process boundary so that the host's
// errors.Is matches the same sentinel; the text travels too.
var (
	// ErrCorruptInput: the input to a decoder is damaged or not in the
	// expected format.
	ErrCorruptInput = errors.New("corrupt input")
	// ErrTooLarge: an output would exceed the limit the caller set.
	ErrTooLarge = errors.New("output exceeds limit")
	// ErrInvalidArgument: a parameter (level, size, op) is out of range.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrUnsupported: the plugin does not implement this operation or
	// optional capability.
	ErrUnsupported = errors.New("unsupported by plugin")
	// ErrNotFound: a named object (VM, migration) does not exist.
	ErrNotFound = errors.New("not found")
	// ErrUnavailable: the resource behind the plugin (device, hypervisor)
	// cannot be reached now; retrying later may succeed.
	ErrUnavailable = errors.New("unavailable")
	// ErrFailedPrecondition: the object is not in a state that allows the
	// operation (e.g. cancelling a finished migration).
	ErrFailedPrecondition = errors.New("failed precondition")
	// ErrCanceled: the caller's context ended.
	ErrCanceled = errors.New("canceled")
	// ErrPluginCrashed is returned by the host side when the plugin process
	// died during a call. The error text carries the plugin's last stderr
	// lines.
	ErrPluginCrashed = errors.New("plugin crashed")
)
