/* A library the cli_target dlopens: its function is probed only once it is loaded. */
volatile long plugin_sink;
__attribute__((noinline)) long plugin_work(long x) { return plugin_sink += x; }
