/* A library for tests/test_ustack.py, dlopened by us_dlopen.c after the tracer has read the
 * module map: a stack through it shows whether ustack() notices a library mapped since. */
__attribute__((noinline)) int us_plugin_call(int (*callback)(int), int x) {
    volatile int here = x; /* read after the call: no tail call */
    return callback(x + 1) + here;
}
