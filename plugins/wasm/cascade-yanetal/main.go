// Command cascade-yanetal is the cascade-yanetal step as a WASM plugin (plugins/ABI.md).
package main

import (
	"qkdkms/plugins/sdk"
	"qkdkms/plugins/steps/reconcile/cascade"
)

func init() { sdk.Register(cascade.NewYanetal) }

func main() {}
