// Package sdk is the guest side of the plugin ABI (plugins/ABI.md) for step
// plugins written in Go: it exports the qkd_* functions, moves bytes across
// the boundary and turns a steps.Factory into a plugin. A plugin's main
// package is:
//
//	package main
//
//	import ("qkdkms/plugins/sdk"; "qkdkms/plugins/steps/sift")
//
//	func init() { sdk.Register(sift.New) }
//	func main() {}
//
// built with GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared.
package sdk

//lint:file-ignore U1000 used by exports.go, which is built only for GOOS=wasip1 (//go:wasmexport)

import (
	"fmt"

	"qkdkms/plugins/steps"
)

var (
	factory steps.Factory
	inst    steps.Step
	bufs    [][]byte // buffers handed out by qkd_alloc, alive until consumed
	result  []byte   // the last result blob
)

// Register installs the plugin's step factory.
func Register(f steps.Factory) { factory = f }

// status codes (ABI.md §4)
const (
	statusOK    = 0
	statusError = 1
)

func alloc(size int32) []byte {
	if size < 0 {
		size = 0
	}
	b := make([]byte, size, size+1) // never zero-capacity: a stable, distinct address
	bufs = append(bufs, b)
	return b
}

func fail(err error) int32 {
	result = []byte(err.Error())
	return statusError
}

func newInstance(role int32, params, seed []byte) (code int32) {
	defer func() {
		if r := recover(); r != nil {
			code = fail(fmt.Errorf("plugin panic in qkd_new: %v", r))
		}
	}()
	defer release()
	if factory == nil {
		return fail(fmt.Errorf("no step registered"))
	}
	if role != int32(steps.Alice) && role != int32(steps.Bob) {
		return fail(fmt.Errorf("bad role %d", role))
	}
	s, err := factory(steps.Role(role), params, seed)
	if err != nil {
		return fail(err)
	}
	inst = s
	result = nil
	return statusOK
}

func step(in, peer []byte, hasPeer bool) (code int32) {
	defer func() {
		if r := recover(); r != nil {
			code = fail(fmt.Errorf("plugin panic in qkd_step: %v", r))
		}
	}()
	defer release()
	if inst == nil {
		return fail(fmt.Errorf("qkd_step before qkd_new"))
	}
	r, err := inst.Step(steps.Input{Data: in, Peer: peer, HasPeer: hasPeer})
	if err != nil {
		return fail(err)
	}
	result = steps.EncodeResult(r)
	return statusOK
}

// release drops the input buffers once a call has consumed them.
func release() {
	for i := range bufs {
		bufs[i] = nil
	}
	bufs = bufs[:0]
}
