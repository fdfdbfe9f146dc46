# Issue 6 end to end on the debug recipe, with the real binary: preprocess -> train -> kill -> resume
# -> export -> reload gives identical logits; plus the errors that must leave checkpoints intact.
# Invoked by ctest with -DDSV=... -DSRC=... -DWORK=...
file(REMOVE_RECURSE "${WORK}")
file(MAKE_DIRECTORY "${WORK}")

include(${CMAKE_CURRENT_LIST_DIR}/expect.cmake)

# jsonl_values(<file> <key> <out-var>): "step=value" for every line that has the key.
function(jsonl_values file key out)
  file(STRINGS "${file}" lines)
  set(values "")
  foreach(line IN LISTS lines)
    string(JSON v ERROR_VARIABLE e GET "${line}" "${key}")
    if(NOT e)
      string(JSON s GET "${line}" step)
      list(APPEND values "${s}=${v}")
    endif()
  endforeach()
  set(${out} "${values}" PARENT_SCOPE)
endfunction()

set(RECIPE ${SRC}/recipes/debug.toml)
set(TRAIN ${DSV} train --recipe ${RECIPE} --set data.shuffle=false --set output.log_interval=100)

# 1. Preprocess the project-made corpus into a Megatron indexed dataset.
expect_ok(${DSV} preprocess --input ${SRC}/data/debug/corpus.jsonl --tokenizer ${SRC}/models/tiny
    --output-prefix ${WORK}/corpus --workers 2)
if(NOT EXISTS ${WORK}/corpus.bin OR NOT EXISTS ${WORK}/corpus.idx)
  message(FATAL_ERROR "preprocess did not write corpus.bin / corpus.idx")
endif()

# 2. The same documents as the flat token file: with the whole dataset in the train split and no
#    shuffling, both sources give the same samples, hence the same losses.
expect_ok(${TRAIN} --steps 3 --data-tokens ${SRC}/data/debug/tokens.bin --metrics-jsonl ${WORK}/flat.jsonl)
expect_ok(${TRAIN} --steps 3 --set data.paths=${WORK}/corpus --metrics-jsonl ${WORK}/megatron.jsonl)
jsonl_values(${WORK}/flat.jsonl loss flat)
jsonl_values(${WORK}/megatron.jsonl loss megatron)
if(NOT flat STREQUAL megatron)
  message(FATAL_ERROR "flat tokens and the preprocessed dataset give different losses:\n${flat}\n${megatron}")
endif()

# 3. An uninterrupted run with validation, checkpoints, TensorBoard.
set(RUN ${TRAIN} --steps 12 --set data.paths=${WORK}/corpus --set data.split=95,5 --set train.eval_interval=4
    --set train.eval_iters=2 --save-interval 4)
expect_ok(${RUN} --save ${WORK}/ckpt_full --metrics-jsonl ${WORK}/full.jsonl --out ${WORK}/full_model
    --set output.tensorboard=${WORK}/tb)
file(GLOB events ${WORK}/tb/events.out.tfevents.*)
if(NOT events)
  message(FATAL_ERROR "no TensorBoard event file in ${WORK}/tb")
endif()

# 4. The same run killed twice, resumed each time with the same command: first in the middle of the
#    step-8 save (files written, not yet renamed into place), then, resumed from step 4, right after
#    step 6 (its last checkpoint is still step 4).
function(expect_killed)
  execute_process(COMMAND ${CMAKE_COMMAND} -E env ${ARGN} RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
  if(rc EQUAL 0)
    message(FATAL_ERROR "the run meant to be killed exited normally: ${ARGN}")
  endif()
  file(READ ${WORK}/ckpt/latest latest)
  string(STRIP "${latest}" latest)
  if(NOT latest STREQUAL "step_00000004")
    message(FATAL_ERROR "after the kill, latest is \"${latest}\", expected step_00000004")
  endif()
endfunction()
expect_killed(DSV_TEST_KILL_DURING_SAVE=before_rename DSV_TEST_KILL_DURING_SAVE_STEP=8
              ${RUN} --save ${WORK}/ckpt --load ${WORK}/ckpt --metrics-jsonl ${WORK}/resumed.jsonl)
file(GLOB stale ${WORK}/ckpt/.tmp-*)
if(NOT stale)
  message(FATAL_ERROR "the kill during the save left no temporary directory: was the save really interrupted?")
endif()
expect_killed(DSV_TEST_KILL_AFTER_STEP=6
              ${RUN} --save ${WORK}/ckpt --load ${WORK}/ckpt --metrics-jsonl ${WORK}/resumed.jsonl)
expect_ok(${RUN} --save ${WORK}/ckpt --load ${WORK}/ckpt --metrics-jsonl ${WORK}/resumed.jsonl --out ${WORK}/resumed_model)
# The three runs shared one metrics file: each resume kept the records up to its checkpoint and
# rewrote the rest, so the file now reads exactly like the uninterrupted run's, step 1 to 12.
foreach(key loss mtp_loss grad_norm lr val_loss)
  jsonl_values(${WORK}/full.jsonl ${key} full)
  jsonl_values(${WORK}/resumed.jsonl ${key} resumed)
  if(NOT resumed OR NOT full STREQUAL resumed)
    message(FATAL_ERROR "resumed ${key} differs from the uninterrupted run:\n${full}\n${resumed}")
  endif()
endforeach()

# 5. Export the resumed run's checkpoint; its logits equal those of the uninterrupted run's weights.
expect_ok(${DSV} export --checkpoint ${WORK}/ckpt --out ${WORK}/hf --dtype fp32)
foreach(f config.json model.safetensors.index.json tokenizer.json)
  if(NOT EXISTS ${WORK}/hf/${f})
    message(FATAL_ERROR "export did not write ${f}")
  endif()
endforeach()
set(IDS 1,17,42,99,7,300,5,12)
expect_ok(${DSV} logits --model ${WORK}/hf --ids ${IDS} --out ${WORK}/exported.npy --mtp-out ${WORK}/exported_mtp.npy)
expect_ok(${DSV} logits --model ${WORK}/full_model --ids ${IDS} --out ${WORK}/full.npy --mtp-out ${WORK}/full_mtp.npy)
foreach(pair "exported.npy;full.npy" "exported_mtp.npy;full_mtp.npy")
  list(GET pair 0 a)
  list(GET pair 1 b)
  file(SHA256 ${WORK}/${a} ha)
  file(SHA256 ${WORK}/${b} hb)
  if(NOT ha STREQUAL hb)
    message(FATAL_ERROR "logits of the exported checkpoint (${a}) differ from the uninterrupted run's (${b})")
  endif()
endforeach()

# 6. Import then export is bit-exact: exporting the export again writes the same shards.
expect_ok(${DSV} export --checkpoint ${WORK}/hf --out ${WORK}/hf2 --dtype fp32)
file(GLOB shards RELATIVE ${WORK}/hf ${WORK}/hf/*.safetensors)
if(NOT shards)
  message(FATAL_ERROR "no safetensors shards in ${WORK}/hf")
endif()
foreach(s IN LISTS shards)
  file(SHA256 ${WORK}/hf/${s} h1)
  file(SHA256 ${WORK}/hf2/${s} h2)
  if(NOT h1 STREQUAL h2)
    message(FATAL_ERROR "re-exporting ${s} changed its bytes")
  endif()
endforeach()

# 7. Plots of the run.
expect_ok(${DSV} plot --metrics ${WORK}/full.jsonl --out ${WORK}/plots)
foreach(f loss.png expert_load.png)
  if(NOT EXISTS ${WORK}/plots/${f})
    message(FATAL_ERROR "dsv plot did not write ${f}")
  endif()
endforeach()

# 8. Chat fine-tuning (recipes/debug_sft.toml): a few steps from models/tiny with validation; the
#    result loads and generates.
expect_ok(${DSV} train --recipe ${SRC}/recipes/debug_sft.toml --steps 4 --set train.eval_interval=2 --set train.eval_iters=2
    --metrics-jsonl ${WORK}/sft.jsonl --out ${WORK}/sft_model)
jsonl_values(${WORK}/sft.jsonl val_loss sft_val)
list(LENGTH sft_val n_val)
if(NOT n_val EQUAL 2)
  message(FATAL_ERROR "the SFT run logged ${n_val} validation losses, expected 2 (steps 2 and 4): ${sft_val}")
endif()
expect_ok(${DSV} generate --model ${WORK}/sft_model --chat --prompt "What is 1 plus 2?" --max-new-tokens 8)

# 9. Bad input: clear errors, and the checkpoint stays as it was.
file(SHA256 ${WORK}/ckpt/latest latest_before)
file(COPY ${WORK}/corpus.bin ${WORK}/corpus.idx DESTINATION ${WORK}/broken)
file(SIZE ${WORK}/broken/corpus.idx idx_size)
math(EXPR idx_keep "${idx_size} / 2")
execute_process(COMMAND truncate -s ${idx_keep} ${WORK}/broken/corpus.idx)
expect_fail("corpus.idx" ${TRAIN} --steps 2 --set data.paths=${WORK}/broken/corpus)
file(WRITE ${WORK}/short.jsonl "{\"text\": \"one two three\"}\n")
expect_ok(${DSV} preprocess --input ${WORK}/short.jsonl --tokenizer ${SRC}/models/tiny --output-prefix ${WORK}/short)
expect_fail("short" ${TRAIN} --steps 2 --set data.paths=${WORK}/short)
expect_fail("no such file" ${DSV} plot --metrics ${WORK}/none.jsonl --out ${WORK}/plots)
file(READ ${SRC}/models/tiny/config.json tiny_config)
string(JSON ffn GET "${tiny_config}" intermediate_size)
math(EXPR ffn "${ffn} + 8")
string(JSON other_config SET "${tiny_config}" intermediate_size ${ffn})
file(WRITE ${WORK}/other/config.json "${other_config}")
expect_fail("intermediate_size" ${TRAIN} --steps 14 --set data.paths=${WORK}/corpus --load ${WORK}/ckpt
            --set model.config=${WORK}/other/config.json)
file(SHA256 ${WORK}/ckpt/latest latest_after)
if(NOT latest_before STREQUAL latest_after)
  message(FATAL_ERROR "a failed run changed ${WORK}/ckpt/latest")
endif()
message(STATUS "train e2e: preprocess, train, kill, resume, export, reload, plot: all consistent")
