# Runs the real dsv binary: --help everywhere, good runs on a fixture, and bad input that must fail
# with a clear message and a non-zero exit (never a crash).  Invoked by ctest with -DDSV=... -DSRC=... -DWORK=...
file(REMOVE_RECURSE "${WORK}")
file(MAKE_DIRECTORY "${WORK}")
set(FIXTURE "${SRC}/tests/fixtures/models/v3_mtp")

include(${CMAKE_CURRENT_LIST_DIR}/expect.cmake)

foreach(sub "" info generate logits bench "bench;infer" train export preprocess plot)
  expect_ok(${DSV} ${sub} --help)
endforeach()

expect_ok(${DSV} export --checkpoint ${FIXTURE} --out ${WORK}/exp --max-shard-size 100KB)
expect_fail("already exists" ${DSV} export --checkpoint ${FIXTURE} --out ${WORK}/exp)
expect_fail("size \"5XB\"" ${DSV} export --checkpoint ${FIXTURE} --out ${WORK}/exp2 --max-shard-size 5XB)
expect_ok(${DSV} info ${FIXTURE})
string(FIND "${LAST_OUT}" "1 stored" pos)
if(pos EQUAL -1)
  message(FATAL_ERROR "dsv info does not report the MTP module:\n${LAST_OUT}")
endif()
expect_ok(${DSV} logits --model ${FIXTURE} --ids 5,9,17,33 --out ${WORK}/l.npy --mtp-out ${WORK}/m.npy --dump ${WORK}/taps)
if(NOT EXISTS ${WORK}/taps/kv_latent.0.npy OR NOT EXISTS ${WORK}/taps/mtp_logits.2.npy)
  message(FATAL_ERROR "--dump did not write the intermediates")
endif()
file(SIZE ${WORK}/l.npy l_size)
# 4 x 128 float32 + 128-byte header
if(NOT l_size EQUAL 2176)
  message(FATAL_ERROR "logits.npy has ${l_size} bytes, expected 2176")
endif()
expect_ok(${DSV} generate --model ${FIXTURE} --prompt-ids 3,4,5 --max-new-tokens 5 --temperature 0.7 --top-p 0.9 --seed 1)
# bf16 inference (matrices and latent cache in bf16) on the CPU; a bad --weights is refused.
expect_ok(${DSV} generate --model ${FIXTURE} --prompt-ids 3,4,5 --max-new-tokens 5 --weights bf16)
expect_ok(${DSV} logits --model ${FIXTURE} --ids 3,4,5 --out ${WORK}/logits_bf16.npy --weights bf16)
expect_fail("--weights f16: expected" ${DSV} generate --model ${FIXTURE} --prompt-ids 3 --weights f16)
expect_fail("--weights int8: expected bf16 or fp32" ${DSV} bench infer --config ${SRC}/models/tiny/config.json
            --device cpu --weights int8)

expect_ok(${DSV} bench infer --config ${SRC}/models/tiny/config.json --prompt-len 8 --gen-len 2 --device cpu
          --json ${WORK}/bench.json)
if(NOT EXISTS ${WORK}/bench.json)
  message(FATAL_ERROR "dsv bench infer --json wrote nothing")
endif()
expect_ok(${DSV} bench infer --config ${SRC}/models/tiny/config.json --batch 3 --prompt-len 5 --gen-len 3 --device cpu
          --json ${WORK}/bench_b3.json)
file(READ ${WORK}/bench_b3.json bench_b3)
if(NOT bench_b3 MATCHES "\"batch\": 3")
  message(FATAL_ERROR "dsv bench infer --batch 3 did not report batch 3: ${bench_b3}")
endif()
expect_ok(${DSV} bench infer --config ${SRC}/models/tiny/config.json --batch 2 --prompt-len 5 --gen-len 3 --device cpu
          --host-turn --json ${WORK}/bench_turn.json)
file(READ ${WORK}/bench_turn.json bench_turn)
if(NOT bench_turn MATCHES "\"host_turn\": true" OR NOT bench_b3 MATCHES "\"host_turn\": false")
  message(FATAL_ERROR "dsv bench infer did not report --host-turn: ${bench_turn}")
endif()

# dsv train: the dry run of the bundled recipe, then a few real steps into ${WORK} (flags override
# the recipe's output paths, so nothing is written into the source tree).
expect_ok(${DSV} train --recipe ${SRC}/recipes/debug.toml --dry-run)
foreach(needle "[optimizer]" "schedule = \"cosine\"" "active per token" "per token (6 x active" "memory" "3306 windows")
  string(FIND "${LAST_OUT}" "${needle}" pos)
  if(pos EQUAL -1)
    message(FATAL_ERROR "dsv train --dry-run does not print \"${needle}\":\n${LAST_OUT}")
  endif()
endforeach()
expect_ok(${DSV} train --recipe ${SRC}/recipes/debug.toml --steps 3 --set train.micro_batch=2
          --metrics-jsonl ${WORK}/train/metrics.jsonl --out ${WORK}/train/model)
file(STRINGS ${WORK}/train/metrics.jsonl metric_lines)
list(LENGTH metric_lines n_metric_lines)
if(NOT n_metric_lines EQUAL 3 OR NOT EXISTS ${WORK}/train/model/config.json OR NOT EXISTS ${WORK}/train/model/tokenizer.json)
  message(FATAL_ERROR "dsv train --steps 3 wrote ${n_metric_lines} metric lines and/or no model directory")
endif()

# Bad input: each a clear error, exit code 1.
file(WRITE ${WORK}/bad_value.toml "[model]\nconfig = \"${SRC}/models/tiny/config.json\"\n[data]\ntokens = \"t.bin\"\n[train]\nsteps = -5\n")
expect_fail("train.steps: expected an integer >= 1, found -5" ${DSV} train --recipe ${WORK}/bad_value.toml --dry-run)
file(WRITE ${WORK}/bad_key.toml "[model]\nconfig = \"c.json\"\n[optimizer]\nlearning_rate = 1e-3\n")
expect_fail("unknown key optimizer.learning_rate" ${DSV} train --recipe ${WORK}/bad_key.toml --dry-run)
expect_fail("optimizer.schedule" ${DSV} train --recipe ${SRC}/recipes/debug.toml --set optimizer.schedule=linear --dry-run)
expect_fail("outside the vocabulary" ${DSV} train --recipe ${SRC}/recipes/debug.toml
            --data-tokens ${SRC}/models/tiny/model.safetensors --dry-run)
expect_fail("exceeds the model's context" ${DSV} bench infer --config ${SRC}/models/tiny/config.json
            --prompt-len 4000 --device cpu)
expect_fail("cannot open" ${DSV} bench infer --config ${WORK}/missing.json --device cpu)
expect_fail("--batch 0: expected 1 .. 4096 sequences" ${DSV} bench infer --config ${SRC}/models/tiny/config.json
            --batch 0 --device cpu)
expect_fail("cannot open" ${DSV} logits --model ${WORK}/nope --ids 1 --out ${WORK}/x.npy)
expect_fail("is not a token id" ${DSV} logits --model ${FIXTURE} --ids 1,x --out ${WORK}/x.npy)
expect_fail("outside the vocabulary" ${DSV} logits --model ${FIXTURE} --ids 1,100000 --out ${WORK}/x.npy)
expect_fail("exceeds the model's context" ${DSV} generate --model ${FIXTURE} --prompt-ids 1 --max-new-tokens 100000)
file(MAKE_DIRECTORY ${WORK}/trunc)
file(COPY ${SRC}/tests/fixtures/models/v3_bf16/config.json DESTINATION ${WORK}/trunc)
# A truncated copy: the first 4000 bytes of the real file (header intact, data cut).
execute_process(COMMAND head -c 4000 ${SRC}/tests/fixtures/models/v3_bf16/model.safetensors
                OUTPUT_FILE ${WORK}/trunc/model.safetensors)
expect_fail("model.safetensors" ${DSV} logits --model ${WORK}/trunc --ids 1 --out ${WORK}/x.npy)
expect_fail("not valid JSON" ${DSV} info ${SRC}/tests/cli)
message(STATUS "cli smoke: all checks passed")
