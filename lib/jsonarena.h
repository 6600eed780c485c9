/*
 * jsonarena.h — jansson values that live for one operation, from a bump
 * arena instead of malloc.
 *
 * A mirrored write parses the request (and maybe the response) into jansson
 * values, maps them, writes the mirror body out and drops them all: 20-50
 * small mallocs and frees per write, and glibc's free lists overflow into
 * consolidation. Between json_arena_begin and json_arena_end on one thread,
 * jansson allocates from the arena and frees into nothing; json_arena_end
 * makes the whole arena reusable. Values made outside (configuration
 * literals shared by reference) are freed with free() as always.
 *
 * Rule: no value allocated inside the bracket may outlive json_arena_end
 * (copy out what must stay, as strings of your own).
 *
 * json_arena_install() sets jansson's allocation functions for the process:
 * call it once, at start-up, before any jansson value exists.
 */
#ifndef DW_JSONARENA_H
#define DW_JSONARENA_H

#include <stddef.h>

struct json_arena_block;
struct json_arena {
	struct json_arena_block *blocks; /* newest first; the last one is kept */
	char *cur, *end;
	size_t used;			 /* bytes handed out since begin (for tests) */
};

void json_arena_install(void);
void json_arena_begin(struct json_arena *a); /* this thread allocates from a */
void json_arena_end(struct json_arena *a);   /* back to malloc; a is empty again */
void json_arena_free(struct json_arena *a);  /* its memory back to malloc */

#endif
