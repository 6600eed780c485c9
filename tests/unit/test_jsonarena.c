/*
 * test_jsonarena — jansson values between json_arena_begin and _end come from
 * the arena and are reused round after round; values made outside are still
 * freed with free() (under ASan, LeakSanitizer fails this test otherwise);
 * a big value takes a block of its own that the end gives back.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <string.h>

#include "jsonarena.h"
#include "jsonfast.h"

static const char doc[] = "{\"user_id\": 7, \"name\": \"Trail Boots\", \"type\": \"shoes\","
			  " \"tags\": [\"a\", \"b\", 3, 4.5, null, true], \"meta\": {\"x\": \"y\"}}";

static void test_rounds_reuse_the_arena(void **state)
{
	struct json_arena a = {0};
	json_t *first = NULL;

	(void)state;
	for (int round = 0; round < 3; round++) {
		json_error_t e;
		json_t *v;
		char *text;

		json_arena_begin(&a);
		v = jsonfast_loadb(doc, sizeof(doc) - 1, &e);
		assert_non_null(v);
		assert_true(a.used > 0);
		if (round == 0)
			first = v;
		else
			assert_ptr_equal(v, first); /* the same memory, round after round */
		json_object_set_new(v, "id", json_integer(42)); /* grows the hashtable */
		text = jsonfast_dumps(v, 0); /* malloc'd: outlives the bracket */
		json_decref(v);
		json_arena_end(&a);
		assert_non_null(strstr(text, "\"id\":42"));
		free(text);
	}
	json_arena_free(&a);
}

static void test_outside_values_are_freed(void **state)
{
	struct json_arena a = {0};
	json_t *lit = json_pack("{s:s, s:[i,i]}", "k", "v", "l", 1, 2); /* malloc'd */
	json_t *v;

	(void)state;
	json_arena_begin(&a);
	v = json_object();
	json_object_set(v, "shared", lit); /* a reference, as a mapping's literal */
	json_decref(lit);		    /* its last reference is now v's */
	json_decref(v);			    /* frees lit with free() */
	json_arena_end(&a);
	json_arena_free(&a);
}

static void test_big_value_gets_its_own_block(void **state)
{
	struct json_arena a = {0};
	size_t n = 200000;
	char *big = malloc(n + 1);
	json_t *s;

	(void)state;
	memset(big, 'x', n);
	big[n] = '\0';
	json_arena_begin(&a);
	s = json_string(big);
	assert_non_null(s);
	assert_true(a.used > n);
	assert_non_null(a.blocks);
	json_decref(s);
	json_arena_end(&a);
	json_arena_begin(&a); /* one standard block left, and it works */
	s = json_string("small");
	assert_string_equal(json_string_value(s), "small");
	json_decref(s);
	json_arena_end(&a);
	json_arena_free(&a);
	assert_null(a.blocks);
	free(big);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_rounds_reuse_the_arena),
	    cmocka_unit_test(test_outside_values_are_freed),
	    cmocka_unit_test(test_big_value_gets_its_own_block),
	};
	json_arena_install();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
