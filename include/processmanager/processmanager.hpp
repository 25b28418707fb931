// The umbrella header: all of processmanager's public API.
#pragma once

#include <processmanager/context.hpp>
#include <processmanager/control.hpp>
#include <processmanager/health.hpp>
#include <processmanager/lifecycle.hpp>
#include <processmanager/metrics.hpp>
#include <processmanager/operation.hpp>
#include <processmanager/process_manager.hpp>
#include <processmanager/restart_options.hpp>
#include <processmanager/run.hpp>
#include <processmanager/runnable.hpp>
#include <processmanager/runtime_guard.hpp>
#include <processmanager/status_json.hpp>
#include <processmanager/systemd.hpp>
#include <processmanager/task_scope.hpp>

#include <processmanager/builtin/blocking.hpp>
#include <processmanager/builtin/idle.hpp>
#include <processmanager/builtin/interval.hpp>
#include <processmanager/builtin/restart.hpp>
#include <processmanager/builtin/signals.hpp>
