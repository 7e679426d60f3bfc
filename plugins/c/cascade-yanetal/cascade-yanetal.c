/*
 * cascade-yanetal — Cascade reconciliation with the Yan et al. schedule
 * (plugin "cascade-yanetal"): the C build of
 * plugins/steps/reconcile/cascade (cascade.NewYanetal), bit for bit. See
 * plugins/c/cascade/cascade_impl.h and plugins/ABI.md.
 */
#define CASCADE_VARIANT CASCADE_YANETAL
#include "cascade/cascade_impl.h"
