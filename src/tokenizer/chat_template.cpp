// apply_chat_template: the template of tokenizer_config.json rendered with the variables
// transformers passes (messages, tools, documents, add_generation_prompt, the named special
// tokens), plus caller-supplied extras.
#include <memory>

#include "core/error.h"
#include "tokenizer/jinja/template.h"
#include "tokenizer/tokenizer_impl.h"

namespace dsv {

namespace {

template <typename J>
std::string render(const Tokenizer::Impl& m, const J& messages, bool add_generation_prompt, const J& extra) {
  DSV_CHECK(!m.chat_template.empty(),
            "this tokenizer has no chat template (tokenizer_config.json has no \"chat_template\" and there is no "
            "chat_template.jinja)");
  DSV_CHECK(messages.is_array(), "chat messages: expected a JSON array of {{\"role\": ..., \"content\": ...}} objects, found {}",
            messages.type_name());
  for (size_t i = 0; i < messages.size(); ++i)
    DSV_CHECK(messages[i].is_object(), "chat messages[{}]: expected an object, found {}", i, messages[i].type_name());
  DSV_CHECK(extra.is_null() || extra.is_object(), "chat template variables: expected a JSON object, found {}",
            extra.type_name());
  std::unordered_map<std::string, jinja::Value> vars;
  for (auto it = m.template_tokens.begin(); it != m.template_tokens.end(); ++it) vars[it.key()] = jinja::from_json(it.value());
  vars["messages"] = jinja::from_json(messages);
  vars["tools"] = jinja::Value::none();
  vars["documents"] = jinja::Value::none();
  vars["add_generation_prompt"] = jinja::Value::boolean(add_generation_prompt);
  if (extra.is_object())
    for (auto it = extra.begin(); it != extra.end(); ++it) vars[it.key()] = jinja::from_json(it.value());
  std::shared_ptr<const jinja::Template> parsed = std::atomic_load(&m.parsed_template);
  if (!parsed) {
    parsed = std::make_shared<const jinja::Template>(m.chat_template);
    std::atomic_store(&m.parsed_template, parsed);
  }
  return parsed->render(vars);
}

}  // namespace

std::string Tokenizer::apply_chat_template(const nlohmann::json& messages, bool add_generation_prompt) const {
  return render(*impl_, messages, add_generation_prompt, nlohmann::json::object());
}

std::string Tokenizer::apply_chat_template(const nlohmann::json& messages, bool add_generation_prompt,
                                           const nlohmann::json& extra_variables) const {
  return render(*impl_, messages, add_generation_prompt, extra_variables);
}

std::string Tokenizer::apply_chat_template(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                           const nlohmann::ordered_json& extra_variables) const {
  return render(*impl_, messages, add_generation_prompt, extra_variables);
}

std::string render_chat_template(const std::string& source, const nlohmann::ordered_json& variables) {
  DSV_CHECK(variables.is_object(), "chat template variables: expected a JSON object");
  std::unordered_map<std::string, jinja::Value> vars;
  for (auto it = variables.begin(); it != variables.end(); ++it) vars[it.key()] = jinja::from_json(it.value());
  return jinja::Template(source).render(vars);
}

}  // namespace dsv
