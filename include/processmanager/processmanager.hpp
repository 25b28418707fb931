// The umbrella header: all of processmanager's public API.
#pragma once

#include <processmanager/context.hpp>
#include <processmanager/control.hpp>
#include <processmanager/operation.hpp>
#include <processmanager/process_manager.hpp>
#include <processmanager/run.hpp>
#include <processmanager/runnable.hpp>
#include <processmanager/runtime_guard.hpp>
