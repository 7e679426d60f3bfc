// Command estimate is the estimate step as a WASM plugin (plugins/ABI.md).
package main

import (
	"qkdkms/plugins/sdk"
	"qkdkms/plugins/steps/estimate"
)

func init() { sdk.Register(estimate.New) }

func main() {}
