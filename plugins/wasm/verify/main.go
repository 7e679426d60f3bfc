// Command verify is the verify step as a WASM plugin (plugins/ABI.md).
package main

import (
	"qkdkms/plugins/sdk"
	"qkdkms/plugins/steps/verify"
)

func init() { sdk.Register(verify.New) }

func main() {}
