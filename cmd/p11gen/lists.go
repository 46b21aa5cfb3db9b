package main

import "hsmemu/cryptoki/calls"

// genLists writes the two function lists: CK_FUNCTION_LIST (version 2.40,
// the calls of Version 2) for C_GetFunctionList, and CK_FUNCTION_LIST_3_0
// (every call) for C_GetInterface. Designated initialisers let the
// compiler check each name against the header's structure and each
// function's type against the member's.
func genLists(e *emitter) error {
	e.p("#include \"p11gen.h\"")
	e.p("")
	e.p("CK_FUNCTION_LIST hsm_function_list = {")
	e.p("\t.version = {2, 40},")
	for _, c := range calls.Table {
		if c.Version == 2 {
			e.p("\t.%s = %s,", c.Name, c.Name)
		}
	}
	e.p("};")
	e.p("")
	e.p("CK_FUNCTION_LIST_3_0 hsm_function_list_3_0 = {")
	e.p("\t.version = {3, 0},")
	for _, c := range calls.Table {
		impl := c.Name
		if c.Name == "C_GetInfo" {
			impl = "hsm_GetInfo30" // reports cryptokiVersion 3.0
		}
		e.p("\t.%s = %s,", c.Name, impl)
	}
	e.p("};")
	return nil
}
