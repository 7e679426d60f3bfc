// Package all lists the step plugins this repository ships, for the native
// runner and the WASM build.
package all

import (
	"qkdkms/plugins/steps"
	"qkdkms/plugins/steps/amplify"
	"qkdkms/plugins/steps/estimate"
	"qkdkms/plugins/steps/reconcile/cascade"
	"qkdkms/plugins/steps/sift"
	"qkdkms/plugins/steps/verify"
)

// Plugin describes one shipped step implementation.
type Plugin struct {
	Name    string // plugin name, also the WASM file's base name
	Kind    steps.Kind
	Version string
	New     steps.Factory
}

// Plugins are the shipped step plugins; the first of each kind is the default.
var Plugins = []Plugin{
	{sift.Name, steps.Sift, sift.Version, sift.New},
	{estimate.Name, steps.Estimate, estimate.Version, estimate.New},
	{cascade.Option8.Name, steps.Reconcile, cascade.Version, cascade.New},
	{cascade.Yanetal.Name, steps.Reconcile, cascade.Version, cascade.NewYanetal},
	{verify.Name, steps.Verify, verify.Version, verify.New},
	{amplify.Name, steps.Amplify, amplify.Version, amplify.New},
}
