// Each subcommand lives in its own file and registers itself on the root CLI::App here.
#pragma once
#include <CLI/CLI.hpp>

namespace dsv::cli {

void register_info(CLI::App& app);
void register_generate(CLI::App& app);
void register_logits(CLI::App& app);
void register_bench(CLI::App& app);
void register_train(CLI::App& app);
void register_plot(CLI::App& app);
void register_export(CLI::App& app);
void register_preprocess(CLI::App& app);
// Tokenizer subcommands (tokenize, detokenize, chat-template) live in cmd_tokenize.cpp.
void register_tokenizer_commands(CLI::App& app);

}  // namespace dsv::cli
