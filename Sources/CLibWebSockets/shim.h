#ifndef PARLEY_CLIBWEBSOCKETS_SHIM_H
#define PARLEY_CLIBWEBSOCKETS_SHIM_H
#include <libwebsockets.h>

// LWS_PRE is a macro expression Swift cannot import: the headroom lws_write needs
// before every payload to put the WebSocket header in.
static inline size_t parley_lws_pre(void) { return LWS_PRE; }

// The server options are 64-bit macro expressions Swift cannot import.
static inline uint64_t parley_lws_server_options(int tls) {
    uint64_t options = LWS_SERVER_OPTION_FAIL_UPON_UNABLE_TO_BIND;
    if (tls) options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    return options;
}

// libuv as the event loop (epoll, not a poll() over every socket at each wake-up); the
// evlib plugin comes with Debian's libwebsockets-dev.
static inline uint64_t parley_lws_option_libuv(void) { return LWS_SERVER_OPTION_LIBUV; }

#endif
