/*
 * fuzz_confsyntax — differential libFuzzer target: lib/confsyntax against
 * libconfig. confsyntax only describes errors libconfig found, so the one
 * property that matters is that it never reports an error in text libconfig
 * accepts (the caller would print a made-up error for a good file), and that
 * it never crashes or reads past the input on any text. Inputs with '@'
 * (@include would open files) or a NUL are skipped. Seeds:
 * tests/fuzz/corpus/confsyntax. Without libFuzzer, replay_main.c drives it.
 */
#include <libconfig.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "confsyntax.h"

/* libconfig 1.5 leaks its string buffer when the input ends inside a string
 * (strbuf_append on the error path): not ours, so not reported. */
#if defined(__SANITIZE_ADDRESS__)
#define DW_LSAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DW_LSAN 1
#endif
#endif
#ifdef DW_LSAN
#include <sanitizer/lsan_interface.h>
#define LIBCONFIG_BEGIN() __lsan_disable()
#define LIBCONFIG_END() __lsan_enable()
#else
#define LIBCONFIG_BEGIN() ((void)0)
#define LIBCONFIG_END() ((void)0)
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct confsyntax_diag d;
	config_t cfg;
	char *text;
	bool found;
	int ok;

	/* The exact bytes, unterminated, so ASan sees any read past the end. */
	char *raw = malloc(size ? size : 1);
	if (!raw)
		return 0;
	memcpy(raw, data, size);
	found = confsyntax_explain(raw, size, &d);
	free(raw);
	if (found && (d.line < 1 || d.what[0] == '\0'))
		abort();
	if (memchr(data, '@', size) || memchr(data, '\0', size))
		return 0;
	text = malloc(size + 1);
	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	LIBCONFIG_BEGIN();
	config_init(&cfg);
	ok = config_read_string(&cfg, text);
	config_destroy(&cfg);
	LIBCONFIG_END();
	free(text);
	if (ok == CONFIG_TRUE && found) {
		fprintf(stderr, "fuzz_confsyntax: libconfig accepts, confsyntax says line %d: %s\n",
			d.line, d.what);
		abort();
	}
	return 0;
}
