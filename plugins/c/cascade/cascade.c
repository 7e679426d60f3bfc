/*
 * cascade — Cascade reconciliation, option 8 of Martinez-Mateo et al.
 * (plugin "cascade", the default reconcile step): the C build of
 * plugins/steps/reconcile/cascade (cascade.New), bit for bit. See
 * cascade_impl.h and plugins/ABI.md.
 */
#define CASCADE_VARIANT CASCADE_OPTION8
#include "cascade/cascade_impl.h"
